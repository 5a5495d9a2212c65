#include "engine/model/convert.h"

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include "engine/util/check.h"
#include "engine/util/float16.h"

namespace litestage {
namespace {

// Loads element i of a possibly unaligned array as fp32.
inline float LoadAsF32(const uint8_t* source, DType dtype, size_t i) {
  switch (dtype) {
    case DType::kF32: {
      float value;
      std::memcpy(&value, source + i * 4, 4);
      return value;
    }
    case DType::kF16: {
      uint16_t bits;
      std::memcpy(&bits, source + i * 2, 2);
      return F16ToF32(bits);
    }
    case DType::kBF16: {
      uint16_t bits;
      std::memcpy(&bits, source + i * 2, 2);
      return Bf16ToF32(bits);
    }
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ8_0:
      // Blocks are never converted element by element (the GGUF loader
      // keeps them or dequantizes whole rows).
      LS_CHECK(false) << "cannot convert " << DTypeName(dtype) << " elements";
  }
  return 0.0f;
}

void ConvertRange(const uint8_t* source, DType source_dtype,
                  uint8_t* destination, DType destination_dtype, size_t begin,
                  size_t end) {
  if (source_dtype == destination_dtype) {
    const size_t size = DTypeSize(source_dtype);
    std::memcpy(destination + begin * size, source + begin * size,
                (end - begin) * size);
    return;
  }
  if (destination_dtype == DType::kF32) {
    float* out = reinterpret_cast<float*>(destination);
    for (size_t i = begin; i < end; ++i) {
      out[i] = LoadAsF32(source, source_dtype, i);
    }
    return;
  }
  LS_CHECK(destination_dtype == DType::kBF16)
      << "cannot convert to " << DTypeName(destination_dtype);
  uint16_t* out = reinterpret_cast<uint16_t*>(destination);
  for (size_t i = begin; i < end; ++i) {
    out[i] = F32ToBf16(LoadAsF32(source, source_dtype, i));
  }
}

}  // namespace

std::unique_ptr<uint8_t[]> AllocateWeightBuffer(size_t bytes) {
  // Not value-initialised: every byte is written by the caller, and zeroing
  // gigabytes first would double the cost of first-touch page faults.
  return std::unique_ptr<uint8_t[]>(new uint8_t[std::max<size_t>(bytes, 1)]);
}

void ParallelForChunks(size_t count, size_t min_chunk,
                       const std::function<void(size_t, size_t)>& body) {
  if (count == 0) return;
  min_chunk = std::max<size_t>(min_chunk, 1);
  const size_t hardware = std::max(1u, std::thread::hardware_concurrency());
  const size_t threads =
      std::min(hardware, (count + min_chunk - 1) / min_chunk);
  if (threads <= 1) {
    body(0, count);
    return;
  }
  const size_t chunk = (count + threads - 1) / threads;
  std::vector<std::thread> workers;
  workers.reserve(threads - 1);
  for (size_t t = 1; t < threads; ++t) {
    const size_t begin = std::min(count, t * chunk);
    const size_t end = std::min(count, begin + chunk);
    if (begin < end) workers.emplace_back(body, begin, end);
  }
  body(0, std::min(count, chunk));
  for (std::thread& worker : workers) worker.join();
}

void ConvertElements(const void* source, DType source_dtype, void* destination,
                     DType destination_dtype, size_t count) {
  const auto* in = static_cast<const uint8_t*>(source);
  auto* out = static_cast<uint8_t*>(destination);
  ParallelForChunks(count, size_t{1} << 20, [&](size_t begin, size_t end) {
    ConvertRange(in, source_dtype, out, destination_dtype, begin, end);
  });
}

}  // namespace litestage
