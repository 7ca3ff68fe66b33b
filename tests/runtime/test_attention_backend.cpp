// Choosing an attention backend per call from a measured table (attention_backend.hpp):
// the call's description from the host, the table's format and lookup, the choice (a vendor
// only where it was measured faster and can run the call, dhp's kernels otherwise), and the
// ring asking for a backend per call. The vendor here stands in for a library's fused
// attention with its usual limits (no explicit-position masks, causal only on equal
// lengths, no fp32 results or accumulation); it computes through dhp's kernels, so results
// can be compared bit for bit.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "dhp/attention_backend.hpp"
#include "dhp/cp_attention.hpp"
#include "dhp/dispatch.hpp"
#include "dhp/error.hpp"
#include "runtime_test_util.hpp"

namespace dhp {
namespace {

using kernels::DType;
using testing::world;

class LimitedVendor final : public AttentionBackend {
 public:
  std::string name() const override { return "vendor"; }
  std::string cannot_run(const AttentionCall& c) const override {
    if (c.explicit_positions) return "explicit positions";
    if (c.shape.causal && !c.equal_lengths) return "causal on unequal lengths";
    if (c.accumulator_results || c.accumulate) return "fp32 results or accumulation";
    return "";
  }
  kernels::Status forward(const kernels::AttentionForwardArgs& args) override {
    ++forwards;
    return kernels::attention_forward(args);
  }
  kernels::Status backward(const kernels::AttentionBackwardArgs& args) override {
    ++backwards;
    return kernels::attention_backward(args);
  }
  int forwards = 0, backwards = 0;
};

AttentionCall whole_sequences(const std::vector<std::int32_t>& cu, bool causal) {
  kernels::AttentionForwardArgs a;
  a.dtype = DType::BF16;
  a.device = Device::CUDA;
  a.shape = {16, 16, 80, 0, causal};
  a.seqs.num_seqs = static_cast<int>(cu.size()) - 1;
  a.seqs.total_q = a.seqs.total_k = cu.back();
  return AttentionCall::of(a, cu.data(), cu.data(), nullptr, nullptr);
}

std::string timing_row(const std::string& backend, const std::string& device, double pairs,
                       double fwd, double fwd_bwd, bool causal = false) {
  return "{\"backend\":\"" + backend + "\",\"device\":\"" + device +
         "\",\"dtype\":\"bf16\",\"head_dim\":80,\"heads_q\":16,\"heads_kv\":16,\"causal\":" +
         (causal ? "true" : "false") +
         ",\"tokens\":4096,\"seqs\":3,\"visible_pairs\":" + std::to_string(pairs) +
         ",\"fwd_ms\":" + std::to_string(fwd) + ",\"fwd_bwd_ms\":" + std::to_string(fwd_bwd) + "}";
}

TEST(AttentionBackend, CallDescribesTheWork) {
  const AttentionCall full = whole_sequences({0, 100, 130}, false);
  EXPECT_DOUBLE_EQ(full.visible_pairs, 100.0 * 100 + 30 * 30);
  EXPECT_FALSE(full.explicit_positions);
  const AttentionCall causal = whole_sequences({0, 100, 130}, true);
  EXPECT_DOUBLE_EQ(causal.visible_pairs, 100.0 * 101 / 2 + 30.0 * 31 / 2);

  // A zigzag piece: queries at positions {0,1,6,7} against keys {2,3,4,5}: brute force.
  const std::vector<std::int32_t> cu_q{0, 4}, cu_k{0, 4}, q_pos{0, 1, 6, 7}, k_pos{2, 3, 4, 5};
  kernels::AttentionForwardArgs a;
  a.shape = {2, 2, 64, 0, true};
  a.seqs.num_seqs = 1;
  a.seqs.total_q = a.seqs.total_k = 4;
  const AttentionCall piece =
      AttentionCall::of(a, cu_q.data(), cu_k.data(), q_pos.data(), k_pos.data());
  double pairs = 0;
  for (int qp : q_pos)
    for (int kp : k_pos) pairs += kp <= qp;
  EXPECT_DOUBLE_EQ(piece.visible_pairs, pairs);
  EXPECT_TRUE(piece.explicit_positions);
  // Positions equal to the row index are no explicit mask (a Whole piece of a CP layout).
  const std::vector<std::int32_t> index{0, 1, 2, 3};
  EXPECT_FALSE(AttentionCall::of(a, cu_q.data(), cu_k.data(), index.data(), index.data())
                   .explicit_positions);
}

TEST(AttentionBackend, TimingsParseAndEstimate) {
  const std::string device = "NVIDIA H100 80GB HBM3";
  const AttentionTimings t = AttentionTimings::parse("{\"device\":\"x\",\"attention\":[" +
                                                     timing_row("dhp", device, 1e6, 2, 6) + "," +
                                                     timing_row("dhp", device, 4e6, 7, 20) + "]}");
  ASSERT_EQ(t.rows().size(), 2u);
  AttentionCall call = whole_sequences({0, 1000, 1200}, false);  // 1.04e6 pairs
  // Nearest row (1e6), scaled by the pairs ratio.
  EXPECT_NEAR(*t.estimate("dhp", device, call, false), 2 * 1.04, 1e-9);
  EXPECT_NEAR(*t.estimate("dhp", device, call, true), 6 * 1.04, 1e-9);
  EXPECT_FALSE(t.estimate("dhp", "another GPU", call, true));
  EXPECT_FALSE(t.estimate("vendor", device, call, true));
  call.shape.head_dim = 128;
  EXPECT_FALSE(t.estimate("dhp", device, call, true)) << "another head size";
  const AttentionCall far = whole_sequences({0, 5000}, false);  // 2.5e7: beyond 2x of 4e6
  EXPECT_FALSE(t.estimate("dhp", device, far, true));

  try {
    AttentionTimings::parse("{\"attention\":[{\"backend\":\"dhp\"}]}");
    FAIL() << "a row without its fields was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("row 0 has no \"device\""), std::string::npos) << e.what();
  }
  EXPECT_THROW(AttentionTimings::parse("[1, 2]"), Error);
  EXPECT_THROW(
      AttentionTimings::parse("{\"attention\":[" + timing_row("dhp", device, 0, 1, 1) + "]}"),
      Error);
}

TEST(AttentionBackend, VendorOnlyWhereMeasuredFasterAndAble) {
  const std::string device = "NVIDIA H100 80GB HBM3";
  auto vendor = std::make_shared<LimitedVendor>();
  const AttentionCall call = whole_sequences({0, 1000, 1200}, false);
  auto choose = [&](const std::string& rows) {
    AttentionBackends backends(device, AttentionTimings::parse("{\"attention\":[" + rows + "]}"));
    backends.add(vendor);
    return backends.choose(call, true);
  };
  // No table: dhp.
  AttentionBackends none(device, AttentionTimings{});
  none.add(vendor);
  EXPECT_EQ(none.choose(call, true).backend->name(), "dhp");
  EXPECT_NE(none.choose(call, true).why.find("no measurement"), std::string::npos);
  // Measured faster: the vendor.
  const std::string faster =
      timing_row("dhp", device, 1e6, 2, 6) + "," + timing_row("vendor", device, 1e6, 1, 4);
  const auto chosen = choose(faster);
  EXPECT_EQ(chosen.backend->name(), "vendor") << chosen.why;
  // Measured slower: dhp.
  EXPECT_EQ(
      choose(timing_row("dhp", device, 1e6, 2, 6) + "," + timing_row("vendor", device, 1e6, 3, 9))
          .backend->name(),
      "dhp");
  // Only the vendor measured: never assumed faster.
  EXPECT_EQ(choose(timing_row("vendor", device, 1e6, 1, 4)).backend->name(), "dhp");
  // Measured on another GPU: not this one's measurement.
  EXPECT_EQ(choose(timing_row("dhp", "NVIDIA A100", 1e6, 2, 6) + "," +
                   timing_row("vendor", "NVIDIA A100", 1e6, 1, 4))
                .backend->name(),
            "dhp");
  // A call the vendor cannot run falls back, saying why.
  AttentionBackends backends(device, AttentionTimings::parse("{\"attention\":[" + faster + "]}"));
  backends.add(vendor);
  AttentionCall ring_piece = call;
  ring_piece.explicit_positions = true;
  const auto fallback = backends.choose(ring_piece, true);
  EXPECT_EQ(fallback.backend->name(), "dhp");
  EXPECT_NE(fallback.why.find("vendor cannot run it (explicit positions)"), std::string::npos)
      << fallback.why;
  EXPECT_THROW(backends.add(std::make_shared<LimitedVendor>()), Error) << "a second 'vendor'";
}

// The ring asks per call: where the table says the vendor is faster it runs the calls it
// can (here the non-causal local pass of every rank), dhp's kernels the rest (the ring
// blocks need fp32 results for the merge); the results equal dhp's alone, bit for bit.
TEST(AttentionBackend, RingRunsEachCallOnItsChosenBackend) {
  Communicator& comm = world();
  const int w = comm.size();
  const std::vector<std::int64_t> lengths{61, 7, 2 * w + 3};
  const Plan plan = testing::one_wave_plan(w, {w}, 3, [](int i) { return i != 1; });
  const std::vector<int> owners{0, (w - 1) % w, 0};
  const WaveDispatch dispatch(plan, 0, lengths, owners, comm.rank(), w);
  const WaveLayout& layout = dispatch.layout();
  const int hq = 16, hkv = 16, hd = 80;
  const auto rows = static_cast<std::size_t>(layout.rows);
  const auto q = testing::random_values<float>(rows * hq * hd, 1);
  const auto k = testing::random_values<float>(rows * hkv * hd, 2);
  const auto v = testing::random_values<float>(rows * hkv * hd, 3);
  const auto dout = testing::random_values<float>(rows * hq * hd, 4);
  CpAttentionContext ctx;
  ctx.dtype = DType::F32;
  ctx.shape = {hq, hkv, hd, 0, false};
  ctx.layout = &layout;
  ctx.world = &comm;
  struct Run {
    std::vector<float> out, lse, dq, dk, dv;
  };
  auto run = [&] {
    Run r{std::vector<float>(q.size()), std::vector<float>(rows * hq), std::vector<float>(q.size()),
          std::vector<float>(k.size()), std::vector<float>(v.size())};
    cp_attention_forward(ctx, q.data(), k.data(), v.data(), r.out.data(), r.lse.data());
    cp_attention_backward(ctx, q.data(), k.data(), v.data(), r.out.data(), r.lse.data(),
                          dout.data(), r.dq.data(), r.dk.data(), r.dv.data());
    return r;
  };
  const Run ours = run();
  // The table: the vendor measured faster on this (CPU) device for F32 at these sizes.
  std::string rows_json;
  for (double pairs = 1; pairs < 1e9; pairs *= 1.9) {
    for (const char* b : {"dhp", "vendor"}) {
      if (!rows_json.empty()) rows_json += ",";
      rows_json += "{\"backend\":\"" + std::string(b) +
                   "\",\"device\":\"cpu\",\"dtype\":\"f32\",\"head_dim\":80,\"heads_q\":16,"
                   "\"heads_kv\":16,\"causal\":false,\"tokens\":1,\"seqs\":1,\"visible_pairs\":" +
                   std::to_string(pairs) + ",\"fwd_ms\":" + (b[0] == 'd' ? "2" : "1") +
                   ",\"fwd_bwd_ms\":" + (b[0] == 'd' ? "6" : "3") + "}";
    }
  }
  AttentionBackends backends("cpu", AttentionTimings::parse("{\"attention\":[" + rows_json + "]}"));
  auto vendor = std::make_shared<LimitedVendor>();
  backends.add(vendor);
  ctx.backends = &backends;
  const Run chosen = run();
  EXPECT_EQ(chosen.out, ours.out);
  EXPECT_EQ(chosen.dq, ours.dq);
  EXPECT_EQ(chosen.dk, ours.dk);
  // The local pass of a non-causal call has no fp32 results at F32 (no widening): the
  // vendor runs it; ring blocks backward accumulate: dhp's kernels.
  if (layout.rows > 0) {
    EXPECT_EQ(vendor->forwards, w > 1 ? w : 1) << "the local pass and, forward, every block";
    EXPECT_EQ(vendor->backwards, 1) << "only the local pass (ring blocks accumulate)";
  }
}

}  // namespace
}  // namespace dhp
