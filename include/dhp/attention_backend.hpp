// Attention backends: dhp's kernels (kernels.hpp) and, where a measurement says it is
// faster, a vendor fused attention (a library's flash or cuDNN attention), behind one
// interface, chosen per call shape.
//
// The choice is made from a measured table, never by assumption: a vendor backend runs a
// call only if the table holds, on this device, a timing of it and of dhp's kernels for the
// same dtype, head size, heads and mask at a comparable size, and it was faster there.
// Anything else runs dhp's kernels: no measurement, a call the vendor cannot express (an
// explicit-position mask such as a ring's zigzag pieces, query and key segments of
// different lengths under a causal mask, results kept in fp32 for a ring's merge), or a
// vendor that cannot return the log-sum-exp the ring needs. scripts/gpu_check.sh writes the
// table (docs/gpu_check.json, "attention" rows).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dhp/kernels.hpp"

namespace dhp {

// What one attention call is, from the host: enough to decide who can run it and how fast.
struct AttentionCall {
  kernels::DType dtype = kernels::DType::BF16;
  kernels::Device device = kernels::Device::CUDA;
  kernels::AttentionShape shape;
  int num_seqs = 0;
  std::int64_t total_q = 0, total_k = 0;
  int max_seqlen_q = 0, max_seqlen_k = 0;
  // Causal pairs (query, key) visible across the call: the work, up to 4 * head_dim flops
  // per pair and head forward. For implicit positions and equal lengths L: L (L + 1) / 2.
  double visible_pairs = 0;
  bool explicit_positions = false;   // positions that differ from the row index (ring pieces)
  bool equal_lengths = true;         // every segment has as many keys as queries
  bool accumulator_results = false;  // out / gradients wanted in fp32 (accumulator_out/grads)
  bool accumulate = false;           // backward adds into dq, dk, dv

  // The call of attention_forward / attention_backward arguments (host-visible cu_seqlens
  // and positions: CPU buffers, or the host copies a ring keeps).
  static AttentionCall of(const kernels::AttentionForwardArgs& args, const std::int32_t* host_cu_q,
                          const std::int32_t* host_cu_k, const std::int32_t* host_q_pos,
                          const std::int32_t* host_k_pos);
};

class AttentionBackend {
 public:
  virtual ~AttentionBackend() = default;
  // The name the measured table uses ("dhp", "torch_flash", ...).
  virtual std::string name() const = 0;
  // "" when this backend runs `call` (forward and backward, with the lse), else why not.
  virtual std::string cannot_run(const AttentionCall& call) const = 0;
  virtual kernels::Status forward(const kernels::AttentionForwardArgs& args) = 0;
  virtual kernels::Status backward(const kernels::AttentionBackwardArgs& args) = 0;
};

// dhp's own kernels: every call check_attention_support accepts.
std::shared_ptr<AttentionBackend> dhp_kernels_backend();

// One measured row: a backend's time for one shape on one device.
struct AttentionTiming {
  std::string backend;  // AttentionBackend::name()
  std::string device;   // e.g. "NVIDIA H100 80GB HBM3"
  kernels::DType dtype = kernels::DType::BF16;
  int head_dim = 0, heads_q = 0, heads_kv = 0;
  bool causal = true;
  std::int64_t tokens = 0;
  int seqs = 0;
  double visible_pairs = 0;  // AttentionCall::visible_pairs of the measured batch
  double fwd_ms = 0;
  double fwd_bwd_ms = 0;  // forward + backward
};

class AttentionTimings {
 public:
  AttentionTimings() = default;
  // The "attention" array of a JSON document (docs/gpu_check.json); throws
  // Error(InvalidInput) naming the row and field that is missing or malformed.
  static AttentionTimings parse(const std::string& json_text);
  static AttentionTimings load(const std::string& path);

  void add(AttentionTiming row) { rows_.push_back(std::move(row)); }
  const std::vector<AttentionTiming>& rows() const { return rows_; }

  // The time `backend` would take for `call` on `device` (forward, or forward + backward):
  // its row for the same dtype, head size, heads and mask nearest in visible pairs, within a
  // factor of 2, scaled by the ratio of visible pairs; nullopt where none is that close.
  std::optional<double> estimate(const std::string& backend, const std::string& device,
                                 const AttentionCall& call, bool with_backward) const;

 private:
  std::vector<AttentionTiming> rows_;
};

// The backends of one device and the table that chooses between them.
class AttentionBackends {
 public:
  // dhp's kernels are always the first backend.
  AttentionBackends(std::string device, AttentionTimings timings);

  // A vendor backend (its name must be the table's).
  void add(std::shared_ptr<AttentionBackend> backend);

  struct Choice {
    AttentionBackend* backend = nullptr;
    std::string why;  // for logs: which estimate won, or why dhp's kernels run
  };
  // The backend for `call`: the fastest by the table among those that can run it, dhp's
  // kernels unless a vendor was measured faster (both measured for this shape).
  Choice choose(const AttentionCall& call, bool with_backward) const;

  const std::string& device() const { return device_; }

 private:
  std::string device_;
  AttentionTimings timings_;
  std::vector<std::shared_ptr<AttentionBackend>> backends_;
};

}  // namespace dhp
