// IEEE binary16 <-> binary32, exactly (the narrowing rounds to nearest even). Used for GGUF
// scales, f16 embeddings and the f16 KV cache; portable code, no F16C needed.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace tritlm {

inline float fp16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in f32
    const float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  const uint32_t bits = exp == 0x1f ? sign | 0x7f800000u | (mant << 13) : sign | ((exp + 112) << 23) | (mant << 13);
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

inline uint16_t f32_to_fp16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00 | ((abs >> 13) & 0x1ff);  // NaN: quieted, payload's top bits
  if (abs == 0x7f800000u) return sign | 0x7c00;                           // inf
  if (abs >= 0x477ff000u) return sign | 0x7c00;                                 // rounds to inf
  if (abs < 0x38800000u) {  // subnormal half (or zero): round abs * 2^24 to an integer
    const float scaled = std::nearbyint(std::ldexp(std::fabs(f), 24));
    return sign | static_cast<uint16_t>(scaled);
  }
  // Normal: drop 13 mantissa bits with round-half-to-even; a carry correctly bumps the exponent.
  const uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1);
  return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
}

}  // namespace tritlm
