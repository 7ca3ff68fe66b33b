// Moving rows between processes with one all_to_all_v: the dispatch of samples
// (dispatch.cpp) and of encoder inputs (item_dispatch.cpp).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "dhp/communicator.hpp"
#include "dhp/error.hpp"

namespace dhp {

inline std::vector<std::int64_t> displacements(const std::vector<std::int64_t>& counts,
                                        std::int64_t scale) {
  std::vector<std::int64_t> displs(counts.size());
  std::int64_t offset = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    displs[i] = offset * scale;
    offset += counts[i];
  }
  return displs;
}

inline std::vector<std::int64_t> scaled(const std::vector<std::int64_t>& counts, std::int64_t scale) {
  std::vector<std::int64_t> out(counts.size());
  for (std::size_t i = 0; i < counts.size(); ++i) out[i] = counts[i] * scale;
  return out;
}

// all_to_all_v of rows: gathers `src` rows `send_rows` into the send buffer, exchanges,
// and scatters the received rows to `recv_rows` of `dst`.
inline void move_rows(Communicator& world, const char* what, const void* src, void* dst,
               std::int64_t row_bytes, const std::vector<std::int64_t>& send_counts,
               const std::vector<std::int64_t>& send_rows,
               const std::vector<std::int64_t>& recv_counts,
               const std::vector<std::int64_t>& recv_rows) {
  DHP_CHECK(world.device() == Device::CPU, InvalidArgument,
            "{}: {} moves host rows and needs a CPU communicator (token ids and labels are "
            "dispatched on the host, then copied to the device)",
            world.describe(), what);
  DHP_CHECK(row_bytes > 0, InvalidArgument, "{}: row_bytes={} must be > 0", what, row_bytes);
  DHP_CHECK(src != nullptr || send_rows.empty(), InvalidArgument,
            "{}: {}: the source buffer is null but {} rows leave this rank (nothing was sent)",
            what, world.describe(), send_rows.size());
  DHP_CHECK(dst != nullptr || recv_rows.empty(), InvalidArgument,
            "{}: {}: the destination buffer is null but {} rows arrive on this rank (nothing "
            "was sent)",
            what, world.describe(), recv_rows.size());
  const auto* src_bytes = static_cast<const std::uint8_t*>(src);
  auto* dst_bytes = static_cast<std::uint8_t*>(dst);
  const auto bytes = static_cast<std::size_t>(row_bytes);
  std::vector<std::uint8_t> send(send_rows.size() * bytes), recv(recv_rows.size() * bytes);
  for (std::size_t i = 0; i < send_rows.size(); ++i) {
    std::memcpy(send.data() + i * bytes, src_bytes + send_rows[i] * row_bytes, bytes);
  }
  world.all_to_all_v(send.data(), scaled(send_counts, row_bytes),
                     displacements(send_counts, row_bytes), recv.data(),
                     scaled(recv_counts, row_bytes), displacements(recv_counts, row_bytes),
                     DataType::U8);
  for (std::size_t i = 0; i < recv_rows.size(); ++i) {
    std::memcpy(dst_bytes + recv_rows[i] * row_bytes, recv.data() + i * bytes, bytes);
  }
}

}  // namespace dhp
