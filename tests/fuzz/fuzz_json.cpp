// libFuzzer target for the JSON readers. The same bytes go to every reader (so any JSON
// file is a useful seed): each may reject them only with dhp::Error; any other exception
// escapes and libFuzzer reports it as a crash. What a reader accepts must survive a
// round trip through its writer unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "dhp/cost_model.hpp"
#include "dhp/error.hpp"
#include "dhp/io.hpp"

namespace {

[[noreturn]] void broken(const char* what, const std::string& first, const std::string& second) {
  std::fprintf(stderr, "round trip changed the %s:\n%s\n---\n%s\n", what, first.c_str(),
               second.c_str());
  std::abort();
}

// Parses, writes, parses the writing again and writes that: both writings must agree.
template <typename Read>
void round_trip(const char* what, std::string_view text, Read read) {
  std::string written;
  try {
    written = dhp::to_json(read(text));
  } catch (const dhp::Error&) {
    return;  // rejected with a clear error: fine
  }
  const std::string rewritten = dhp::to_json(read(written));  // must not throw now
  if (written != rewritten) broken(what, written, rewritten);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  round_trip("cluster", text, [](std::string_view t) { return dhp::cluster_from_json(t); });
  round_trip("model", text, [](std::string_view t) { return dhp::model_from_json(t); });
  round_trip("batch", text, [](std::string_view t) { return dhp::batch_from_json(t); });
  round_trip("batch stream", text, [](std::string_view t) { return dhp::batches_from_json(t); });
  round_trip("plan", text, [](std::string_view t) { return dhp::plan_from_json(t); });
  try {
    (void)dhp::measurements_from_json(std::string(text));
  } catch (const dhp::Error&) {
  }
  return 0;
}
