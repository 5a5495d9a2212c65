// libFuzzer target: arbitrary bytes as a GGUF file. The parser must return a
// Status (never crash, hang or read out of bounds); every tensor it accepts
// must have its whole byte range inside the input, and dequantizing its
// first row must stay inside that range too.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "engine/model/dequantize.h"
#include "engine/model/gguf.h"
#include "engine/util/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto parsed = litestage::ParseGgufBytes(bytes, "fuzz.gguf");
  if (!parsed.ok()) return 0;
  const uint8_t* end = data + size;
  uint8_t checksum = 0;
  for (const litestage::GgufTensor& tensor : parsed->tensors()) {
    LS_CHECK(tensor.data >= data && tensor.data + tensor.nbytes <= end)
        << tensor.name;
    for (size_t i = 0; i < tensor.nbytes; ++i) checksum ^= tensor.data[i];
    LS_CHECK(parsed->FindTensor(tensor.name) == &tensor) << tensor.name;
    // The first row (dims[0] elements) lies inside the tensor's bytes.
    if (litestage::IsDequantizeSupported(tensor.type) &&
        tensor.dims[0] <= 4096) {
      std::vector<float> row(static_cast<size_t>(tensor.dims[0]));
      LS_CHECK(litestage::DequantizeRow(tensor.type, tensor.data,
                                        tensor.dims[0], row.data())
                   .ok());
    }
  }
  // The typed getters must not crash on any key.
  for (const litestage::GgufKeyValue& kv : parsed->metadata()) {
    (void)parsed->GetString(kv.key);
    (void)parsed->GetInt(kv.key);
    (void)parsed->GetFloat(kv.key);
    (void)parsed->GetBool(kv.key);
    (void)parsed->GetStringArray(kv.key);
    (void)parsed->GetIntArray(kv.key);
    (void)parsed->GetFloatArray(kv.key);
    LS_CHECK(parsed->Find(kv.key) != nullptr);
  }
  volatile uint8_t sink = checksum;
  (void)sink;
  return 0;
}
