// LibTorch tensors through dhp's adapter: a tensor's kernel dtype, and the error that
// names a tensor of the wrong type. The same translation unit formats with fmt and logs
// with spdlog while it sees LibTorch's include directories: with LibTorch 2.x (which ships
// its own fmt headers) that compiles and links only if the torch component put the fmt
// that dhp and spdlog were built with first.
#include <dhp/error.hpp>
#include <dhp/log.hpp>
#include <dhp/torch.hpp>

#include <cstdio>
#include <string>

int main() {
  const at::Tensor t = torch::ones({2, 3}, torch::kFloat64);
  const dhp::kernels::DType dtype = dhp::kernel_dtype(t, "t");
  dhp::check_tensor(t, "t", dhp::kernels::DType::F64, dhp::kernels::Device::CPU, {2, -1});
  bool ok = dtype == dhp::kernels::DType::F64 && dhp::scalar_type(dtype) == torch::kFloat64;
  try {
    dhp::kernel_dtype(torch::ones({2}, torch::kInt32), "ids");
    ok = false;
  } catch (const dhp::Error& e) {
    std::printf("consumer: %s\n", e.what());
  }
  const std::string shape = fmt::format("{}x{} {:.1f}", t.size(0), t.size(1), 0.5);
  ok = ok && shape == "2x3 0.5";
  DHP_LOG_INFO("consumer: tensor {} through dhp::torch", shape);
  std::printf("consumer: dhp::torch %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
