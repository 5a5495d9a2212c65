// libFuzzer target: arbitrary bytes as a safetensors file. The parser must
// return a Status (never crash, hang or read out of bounds), and every tensor
// it accepts must have its whole byte range readable.
#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"
#include "engine/model/safetensors.h"
#include "engine/util/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto parsed = litestage::ParseSafetensorsBytes(bytes, "fuzz.safetensors");
  if (!parsed.ok()) return 0;
  const uint8_t* end = data + size;
  uint8_t checksum = 0;
  for (const litestage::SafetensorsTensor& tensor : parsed->tensors) {
    LS_CHECK(tensor.data >= data && tensor.data + tensor.nbytes <= end)
        << tensor.name;
    // ASan reports any byte outside the input buffer.
    for (size_t i = 0; i < tensor.nbytes; ++i) checksum ^= tensor.data[i];
    LS_CHECK(parsed->Find(tensor.name) == &tensor) << tensor.name;
  }
  // Keep the reads from being optimised away.
  volatile uint8_t sink = checksum;
  (void)sink;
  return 0;
}
