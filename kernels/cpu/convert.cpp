// dtype conversion on the CPU, through the bit conversions of dhp/float16.hpp.
#include <cstdint>
#include <cstring>

#include "cpu/cpu_kernels.hpp"
#include "dhp/float16.hpp"

namespace dhp::kernels::cpu {
namespace {

double load(DType dtype, const void* src, std::int64_t i) {
  switch (dtype) {
    case DType::F32:
      return static_cast<const float*>(src)[i];
    case DType::F64:
      return static_cast<const double*>(src)[i];
    case DType::BF16:
      return bf16_to_float(static_cast<const std::uint16_t*>(src)[i]);
    case DType::F16:
      return f16_to_float(static_cast<const std::uint16_t*>(src)[i]);
  }
  return 0;
}

// 16-bit targets round from float: every value arriving here is float or a widened
// float/bf16/f16 except f64 sources, for which double -> float -> 16 bit can double-round
// (harmless for the accumulator conversions this serves).
void store(DType dtype, void* dst, std::int64_t i, double value) {
  switch (dtype) {
    case DType::F32:
      static_cast<float*>(dst)[i] = static_cast<float>(value);
      break;
    case DType::F64:
      static_cast<double*>(dst)[i] = value;
      break;
    case DType::BF16:
      static_cast<std::uint16_t*>(dst)[i] = float_to_bf16(static_cast<float>(value));
      break;
    case DType::F16:
      static_cast<std::uint16_t*>(dst)[i] = float_to_f16(static_cast<float>(value));
      break;
  }
}

}  // namespace

void convert_dtype(const ConvertArgs& args) {
  if (args.src_dtype == args.dst_dtype) {
    if (args.src != args.dst)
      std::memmove(args.dst, args.src,
                   static_cast<std::size_t>(args.count * dtype_size(args.src_dtype)));
    return;
  }
  for (std::int64_t i = 0; i < args.count; ++i)
    store(args.dst_dtype, args.dst, i, load(args.src_dtype, args.src, i));
}

}  // namespace dhp::kernels::cpu
