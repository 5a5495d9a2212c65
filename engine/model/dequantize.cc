#include "engine/model/dequantize.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/util/float16.h"

namespace litestage {
namespace {

// Blocks are byte arrays read field by field with memcpy, so `src` needs no
// alignment. Layouts follow ggml-common.h.
uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
float LoadF16(const uint8_t* p) { return F16ToF32(LoadU16(p)); }

constexpr int kQK = 32;    // Elements per block of the 32-element types.
constexpr int kQKK = 256;  // Elements per K-quant super-block.

// block_q4_0: f16 d; u8 qs[16]. Low nibbles are elements 0..15, high
// nibbles 16..31; value = (q - 8) * d.
void DequantizeQ4_0(const uint8_t* src, int64_t blocks, float* dst) {
  for (int64_t b = 0; b < blocks; ++b, src += 18, dst += kQK) {
    const float d = LoadF16(src);
    const uint8_t* qs = src + 2;
    for (int j = 0; j < 16; ++j) {
      dst[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
      dst[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
    }
  }
}

// block_q4_1: f16 d; f16 m; u8 qs[16]; value = q * d + m.
void DequantizeQ4_1(const uint8_t* src, int64_t blocks, float* dst) {
  for (int64_t b = 0; b < blocks; ++b, src += 20, dst += kQK) {
    const float d = LoadF16(src);
    const float m = LoadF16(src + 2);
    const uint8_t* qs = src + 4;
    for (int j = 0; j < 16; ++j) {
      dst[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
      dst[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
    }
  }
}

// block_q5_0: f16 d; u32 qh (5th bits); u8 qs[16]; value = (q - 16) * d.
void DequantizeQ5_0(const uint8_t* src, int64_t blocks, float* dst) {
  for (int64_t b = 0; b < blocks; ++b, src += 22, dst += kQK) {
    const float d = LoadF16(src);
    const uint32_t qh = LoadU32(src + 2);
    const uint8_t* qs = src + 6;
    for (int j = 0; j < 16; ++j) {
      const uint8_t high0 = ((qh >> j) << 4) & 0x10;
      const uint8_t high1 = (qh >> (j + 12)) & 0x10;
      dst[j] = static_cast<float>(((qs[j] & 0x0F) | high0) - 16) * d;
      dst[j + 16] = static_cast<float>(((qs[j] >> 4) | high1) - 16) * d;
    }
  }
}

// block_q5_1: f16 d; f16 m; u32 qh; u8 qs[16]; value = q * d + m.
void DequantizeQ5_1(const uint8_t* src, int64_t blocks, float* dst) {
  for (int64_t b = 0; b < blocks; ++b, src += 24, dst += kQK) {
    const float d = LoadF16(src);
    const float m = LoadF16(src + 2);
    const uint32_t qh = LoadU32(src + 4);
    const uint8_t* qs = src + 8;
    for (int j = 0; j < 16; ++j) {
      const uint8_t high0 = ((qh >> j) << 4) & 0x10;
      const uint8_t high1 = (qh >> (j + 12)) & 0x10;
      dst[j] = static_cast<float>((qs[j] & 0x0F) | high0) * d + m;
      dst[j + 16] = static_cast<float>((qs[j] >> 4) | high1) * d + m;
    }
  }
}

// block_q8_0: f16 d; i8 qs[32]; value = q * d.
void DequantizeQ8_0(const uint8_t* src, int64_t blocks, float* dst) {
  for (int64_t b = 0; b < blocks; ++b, src += 34, dst += kQK) {
    const float d = LoadF16(src);
    const auto* qs = reinterpret_cast<const int8_t*>(src + 2);
    for (int j = 0; j < kQK; ++j) dst[j] = static_cast<float>(qs[j]) * d;
  }
}

// The 6-bit scale and min of sub-block j (0..7) packed in 12 bytes.
void ScaleMinK4(int j, const uint8_t* q, uint8_t* scale, uint8_t* min) {
  if (j < 4) {
    *scale = q[j] & 63;
    *min = q[j + 4] & 63;
  } else {
    *scale = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// block_q4_K: f16 d; f16 dmin; u8 scales[12]; u8 qs[128]. Eight sub-blocks
// of 32; value = d * scale * q - dmin * min.
void DequantizeQ4_K(const uint8_t* src, int64_t blocks, float* dst) {
  for (int64_t b = 0; b < blocks; ++b, src += 144) {
    const float d = LoadF16(src);
    const float dmin = LoadF16(src + 2);
    const uint8_t* scales = src + 4;
    const uint8_t* q = src + 16;
    for (int j = 0, is = 0; j < kQKK; j += 64, is += 2, q += 32) {
      uint8_t sc, m;
      ScaleMinK4(is, scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      ScaleMinK4(is + 1, scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *dst++ = d1 * (q[l] & 0x0F) - m1;
      for (int l = 0; l < 32; ++l) *dst++ = d2 * (q[l] >> 4) - m2;
    }
  }
}

// block_q5_K: f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128].
void DequantizeQ5_K(const uint8_t* src, int64_t blocks, float* dst) {
  for (int64_t b = 0; b < blocks; ++b, src += 176) {
    const float d = LoadF16(src);
    const float dmin = LoadF16(src + 2);
    const uint8_t* scales = src + 4;
    const uint8_t* qh = src + 16;
    const uint8_t* ql = src + 48;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0, is = 0; j < kQKK; j += 64, is += 2, ql += 32) {
      uint8_t sc, m;
      ScaleMinK4(is, scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      ScaleMinK4(is + 1, scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) {
        *dst++ = d1 * ((ql[l] & 0x0F) + ((qh[l] & u1) ? 16 : 0)) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        *dst++ = d2 * ((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
      }
      u1 <<= 2;
      u2 <<= 2;
    }
  }
}

// block_q6_K: u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d.
void DequantizeQ6_K(const uint8_t* src, int64_t blocks, float* dst) {
  for (int64_t b = 0; b < blocks; ++b, src += 210) {
    const float d = LoadF16(src + 208);
    const uint8_t* ql = src;
    const uint8_t* qh = src + 128;
    const auto* sc = reinterpret_cast<const int8_t*>(src + 192);
    for (int n = 0; n < kQKK;
         n += 128, dst += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        dst[l] = d * sc[is] * q1;
        dst[l + 32] = d * sc[is + 2] * q2;
        dst[l + 64] = d * sc[is + 4] * q3;
        dst[l + 96] = d * sc[is + 6] * q4;
      }
    }
  }
}

}  // namespace

bool IsDequantizeSupported(GgufType type) {
  switch (type) {
    case GgufType::kF32:
    case GgufType::kF16:
    case GgufType::kBF16:
    case GgufType::kQ4_0:
    case GgufType::kQ4_1:
    case GgufType::kQ5_0:
    case GgufType::kQ5_1:
    case GgufType::kQ8_0:
    case GgufType::kQ4_K:
    case GgufType::kQ5_K:
    case GgufType::kQ6_K:
      return true;
    default:
      return false;
  }
}

absl::Status DequantizeRow(GgufType type, const uint8_t* src, int64_t n,
                           float* dst) {
  if (!IsDequantizeSupported(type)) {
    return absl::UnimplementedError(absl::StrCat(
        "dequantizing tensor type ", GgufTypeName(type), " is not supported"));
  }
  const GgufTypeInfo* info = FindGgufTypeInfo(static_cast<uint32_t>(type));
  if (n < 0 || n % info->block_elements != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot dequantize ", n, " elements of ", info->name,
        ": not a multiple of the block size ", info->block_elements));
  }
  const int64_t blocks = n / info->block_elements;
  switch (type) {
    case GgufType::kF32:
      if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      break;
    case GgufType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = LoadF16(src + 2 * i);
      break;
    case GgufType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(LoadU16(src + 2 * i));
      break;
    case GgufType::kQ4_0:
      DequantizeQ4_0(src, blocks, dst);
      break;
    case GgufType::kQ4_1:
      DequantizeQ4_1(src, blocks, dst);
      break;
    case GgufType::kQ5_0:
      DequantizeQ5_0(src, blocks, dst);
      break;
    case GgufType::kQ5_1:
      DequantizeQ5_1(src, blocks, dst);
      break;
    case GgufType::kQ8_0:
      DequantizeQ8_0(src, blocks, dst);
      break;
    case GgufType::kQ4_K:
      DequantizeQ4_K(src, blocks, dst);
      break;
    case GgufType::kQ5_K:
      DequantizeQ5_K(src, blocks, dst);
      break;
    case GgufType::kQ6_K:
      DequantizeQ6_K(src, blocks, dst);
      break;
    default:
      break;
  }
  return absl::OkStatus();
}

}  // namespace litestage
