// dtype conversion on the CPU: bf16/f16 storage <-> float by bit manipulation (no
// compiler extension types), round to nearest even, NaN and infinities kept.
#include <bit>
#include <cmath>
#include <cstring>

#include "cpu/cpu_kernels.hpp"

namespace dhp::kernels::cpu {
namespace {

float bf16_to_float(std::uint16_t h) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16);
}

std::uint16_t float_to_bf16(float f) {
  const auto x = std::bit_cast<std::uint32_t>(f);
  if (std::isnan(f)) return static_cast<std::uint16_t>((x >> 16) | 0x40);  // stay a (quiet) NaN
  const std::uint32_t rounding = 0x7fff + ((x >> 16) & 1);
  return static_cast<std::uint16_t>((x + rounding) >> 16);
}

float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1f;
  const std::uint32_t mantissa = h & 0x3ff;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign != 0 ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

std::uint16_t float_to_f16(float f) {
  std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u)
    return static_cast<std::uint16_t>(sign | (x > 0x7f800000u ? 0x7e00 : 0x7c00));
  if (x >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00);  // >= 65520 rounds to inf
  if (x < 0x38800000u) {
    // Below 2^-14: a subnormal half, round(|f| * 2^24) (exact scaling, nearbyint rounds to
    // even); 0x400 is correctly the smallest normal.
    const float scaled = std::ldexp(std::bit_cast<float>(x), 24);
    return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(std::nearbyint(scaled)));
  }
  std::uint32_t h = (((x >> 23) - 112) << 10) | ((x & 0x7fffffu) >> 13);
  const std::uint32_t rest = x & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u) != 0)) ++h;  // a carry bumps the exponent
  return static_cast<std::uint16_t>(sign | h);
}

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
