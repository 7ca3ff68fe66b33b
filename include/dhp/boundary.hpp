// The encoder/LLM boundary of one step: each visual item's embeddings go from the encoder
// processes that produced them to the LLM processes that consume them, in the LLM's layout
// (zigzag chunks or whole, per SequencePlan), and in backward their gradients go back.
//
// Who sends what. An encoder rank is `encoder.tp` processes that all hold its embeddings
// (replicated by the encoder's last row-parallel layer); an LLM rank is `llm.tp` processes
// that all need the visual rows they run (and, after the LLM's TP all-reduce of the input
// gradient, all hold the same gradients). Forward, each consumer process that does not hold
// a row already receives it once, from the producer process of its TP index (mod the
// encoder's TP); backward, each producer process that does not hold a gradient receives it
// once, from the consumer process of its TP index (mod the LLM's TP). A process that is
// both (colocated placement, the same device) copies locally. So every element crosses the
// wire at most once per direction and destination, and only when producer and consumer
// differ: bytes() reports what this process sent and the step's minimum, which the plan
// alone determines, for the whole world.
//
// Rows are `row_bytes` bytes (the LLM's hidden size x the dtype size). Per wave:
// embeddings / d_embeddings hold the process's EncoderWave::token_rows rows (its pieces in
// order); visual / d_visual hold its LlmWave::visuals rows, in that order.
//
// Colocated: send_embeddings, then receive_embeddings, then wait the sends (and the same for
// the gradients). Disjoint: the encoder process sends after encoding a wave and receives the
// gradients when it runs that wave's backward; the LLM process receives, runs, sends. Each
// wave and direction has its own tags, so a wave in flight never meets the next one.
#pragma once

#include <cstdint>
#include <vector>

#include "dhp/communicator.hpp"
#include "dhp/step_schedule.hpp"

namespace dhp {

struct BoundaryBytes {
  std::int64_t sent_forward = 0, sent_backward = 0;  // by this process, so far this step
  std::int64_t min_forward = 0, min_backward = 0;    // the whole world's minimum for the step
};

class Boundary {
 public:
  // The schedule (and the batch and plan it points to) must outlive the boundary.
  Boundary(const StepSchedule& schedule, std::int64_t row_bytes);

  // Forward, producer side: posts this process's rows of the wave to every consumer that
  // needs them from it. `embeddings` must stay alive until the request is waited.
  CommRequestPtr send_embeddings(Communicator& world, int wave, const void* embeddings);
  // Forward, consumer side: fills `visual`; rows this process produced itself come from
  // `embeddings` (null where it produced none).
  void receive_embeddings(Communicator& world, int wave, const void* embeddings, void* visual);
  // Backward, consumer side: posts the gradients of the visual rows to every producer that
  // needs them from this process. `d_visual` must stay alive until the request is waited.
  CommRequestPtr send_gradients(Communicator& world, int wave, const void* d_visual);
  // Backward, producer side: fills `d_embeddings`; rows this process consumed itself come
  // from `d_visual` (null where it consumed none).
  void receive_gradients(Communicator& world, int wave, const void* d_visual,
                         void* d_embeddings);

  const BoundaryBytes& bytes() const { return bytes_; }
  std::int64_t row_bytes() const { return row_bytes_; }

 private:
  // One direction of one wave on this process: rows it sends to each peer, rows it
  // receives from each peer (both in the canonical (item, token) order), local copies.
  struct Route {
    std::vector<int> send_peers;
    std::vector<std::vector<std::int64_t>> send_rows;  // source rows per send peer
    std::vector<int> recv_peers;
    std::vector<std::vector<std::int64_t>> recv_rows;  // destination rows per recv peer
    std::vector<std::pair<std::int64_t, std::int64_t>> local;  // (source row, destination row)
  };
  struct WaveRoutes {
    Route forward, backward;
    std::int64_t source_rows_forward = 0, source_rows_backward = 0;  // buffer sizes
  };
  void build(int wave);
  CommRequestPtr post_sends(Communicator& world, const Route& route, const void* source, int tag,
                            const char* what, std::int64_t& sent);
  void receive(Communicator& world, const Route& route, const void* local_source, void* dest,
               int tag, const char* what, std::int64_t dest_rows);
  void check_world(const Communicator& world, int wave, const char* what) const;

  const StepSchedule& schedule_;
  std::int64_t row_bytes_;
  std::vector<WaveRoutes> routes_;
  BoundaryBytes bytes_;
};

}  // namespace dhp
