#include "engine/model/gguf_weights.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <optional>
#include <set>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/convert.h"
#include "engine/model/dequantize.h"
#include "engine/model/fingerprint.h"
#include "engine/model/quant_blocks.h"
#include "engine/model/safetensors.h"
#include "engine/model/weight_layout.h"
#include "engine/util/check.h"
#include "engine/util/float16.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace litestage {
namespace {

using nlohmann::json;

// An optional key: its value, `fallback` when absent, the error otherwise.
absl::StatusOr<int64_t> IntOr(const GgufFile& file, const std::string& key,
                              int64_t fallback) {
  if (file.Find(key) == nullptr) return fallback;
  return file.GetInt(key);
}
absl::StatusOr<double> FloatOr(const GgufFile& file, const std::string& key,
                               double fallback) {
  if (file.Find(key) == nullptr) return fallback;
  return file.GetFloat(key);
}

absl::Status Unsupported(const GgufFile& file, absl::string_view what) {
  return absl::UnimplementedError(absl::StrCat(file.path(), ": ", what));
}

// Builds the checked tensors of ModelWeights from a GGUF file.
class GgufWeightBuilder {
 public:
  // `rope_head_dim` > 0: the file's Q and K rows are interleaved per head of
  // that size by llama.cpp's converter and are put back in HF order.
  // `use_mmap` false: every tensor is copied, none is a view into the file.
  // `keep_blocks`: matrices stored as Q4_0, Q4_1 or Q8_0 stay in their
  // blocks (the kernels compute on them); other matrices become the dtype
  // Matrix() is asked for.
  GgufWeightBuilder(const GgufFile& file, ModelWeights& weights,
                    int64_t rope_head_dim, bool use_mmap, bool keep_blocks)
      : file_(file),
        weights_(weights),
        rope_head_dim_(rope_head_dim),
        use_mmap_(use_mmap),
        keep_blocks_(keep_blocks) {}

  // The tensor `name` after checking it exists, has a type DequantizeRow
  // supports and the shape [rows, cols] (a vector when rows == 0).
  absl::StatusOr<const GgufTensor*> Lookup(const std::string& name,
                                           int64_t rows, int64_t cols) {
    const std::vector<int64_t> dims =
        rows == 0 ? std::vector<int64_t>{cols}
                  : std::vector<int64_t>{cols, rows};  // GGUF order.
    const GgufTensor* tensor = file_.FindTensor(name);
    if (tensor == nullptr) {
      return absl::NotFoundError(
          absl::StrCat(file_.path(), ": missing tensor '", name,
                       "' (expected GGUF dims ", ShapeToString(dims), ")"));
    }
    used_.insert(name);
    if (!IsDequantizeSupported(tensor->type)) {
      return absl::UnimplementedError(absl::StrCat(
          file_.path(), ": tensor '", name, "' has type ",
          GgufTypeName(tensor->type),
          ", which litestage cannot dequantize (supported: F32, F16, BF16, "
          "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)"));
    }
    if (tensor->dims != dims) {
      return absl::InvalidArgumentError(
          absl::StrCat(file_.path(), ": tensor '", name, "' has GGUF dims ",
                       ShapeToString(tensor->dims),
                       " but the metadata implies ", ShapeToString(dims)));
    }
    return tensor;
  }

  bool Has(const std::string& name) const {
    return file_.FindTensor(name) != nullptr;
  }

  absl::StatusOr<Tensor> Vector(const std::string& name, int64_t size) {
    LS_ASSIGN_OR_RETURN(const GgufTensor* stored, Lookup(name, 0, size));
    return Dequantize(*stored, 1, size, DType::kF32, 0);
  }

  // A [rows, cols] matrix in `dtype`; Q and K rows de-interleaved when the
  // converter interleaved them (see SourceRow).
  absl::StatusOr<Tensor> Matrix(const std::string& name, int64_t rows,
                                int64_t cols, DType dtype) {
    LS_ASSIGN_OR_RETURN(const GgufTensor* stored, Lookup(name, rows, cols));
    const bool interleaved =
        absl::EndsWith(name, absl::StrCat(".", kGgufTensorNames.q_proj)) ||
        absl::EndsWith(name, absl::StrCat(".", kGgufTensorNames.k_proj));
    const int64_t head_dim = interleaved ? rope_head_dim_ : 0;
    if (keep_blocks_) {
      if (const std::optional<DType> blocks = BlockDType(stored->type)) {
        return Blocks(*stored, rows, cols, *blocks, head_dim);
      }
    }
    const bool same_type =
        (stored->type == GgufType::kF32 && dtype == DType::kF32) ||
        (stored->type == GgufType::kBF16 && dtype == DType::kBF16);
    const auto address = reinterpret_cast<uintptr_t>(stored->data);
    if (use_mmap_ && same_type && head_dim == 0 &&
        address % DTypeSize(dtype) == 0) {
      made_views_ = true;
      return Tensor{dtype, {rows, cols}, stored->data};
    }
    return Dequantize(*stored, rows, cols, dtype, head_dim);
  }

  // Whether any tensor is a view into the file (which must then stay
  // mapped).
  bool made_views() const { return made_views_; }

  std::vector<std::string> Unused() const {
    std::vector<std::string> names;
    for (const GgufTensor& tensor : file_.tensors()) {
      if (!used_.contains(tensor.name)) names.push_back(tensor.name);
    }
    return names;
  }

 private:
  // llama.cpp's converter reorders each head's Q/K rows from Hugging Face's
  // rotate_half layout (first half, second half) to interleaved pairs: GGUF
  // row 2k + c of a head holds HF row c * head_dim / 2 + k. This maps an HF
  // row back to the GGUF row holding it.
  static int64_t SourceRow(int64_t row, int64_t head_dim) {
    if (head_dim == 0) return row;
    const int64_t half = head_dim / 2;
    const int64_t head = row / head_dim;
    const int64_t within = row % head_dim;
    const int64_t c = within / half;
    const int64_t k = within % half;
    return head * head_dim + 2 * k + c;
  }

  // The block-quantized DType that holds `type` as stored, if any.
  static std::optional<DType> BlockDType(GgufType type) {
    switch (type) {
      case GgufType::kQ4_0:
        return DType::kQ4_0;
      case GgufType::kQ4_1:
        return DType::kQ4_1;
      case GgufType::kQ8_0:
        return DType::kQ8_0;
      default:
        return std::nullopt;
    }
  }

  // A [rows, cols] matrix left in its blocks (quant_blocks.h): the
  // quantized values copied as stored, the f16 scales widened to f32 (both
  // exact), and the Q/K rows put back in order (whole rows of blocks move).
  Tensor Blocks(const GgufTensor& stored, int64_t rows, int64_t cols,
                DType dtype, int64_t head_dim) {
    Tensor tensor{dtype, {rows, cols}, nullptr};
    const int64_t blocks_per_row = cols / kQuantBlockElements;
    const GgufTypeInfo* info =
        FindGgufTypeInfo(static_cast<uint32_t>(stored.type));
    LS_CHECK(info != nullptr);
    const size_t stored_block = static_cast<size_t>(info->block_bytes);
    const size_t block_bytes = DTypeBlockBytes(dtype);
    std::unique_ptr<uint8_t[]> buffer = AllocateWeightBuffer(
        static_cast<size_t>(rows) * DTypeRowBytes(dtype, cols));
    uint8_t* out = buffer.get();
    ParallelForChunks(
        static_cast<size_t>(rows), 64, [&](size_t begin, size_t end) {
          for (size_t row = begin; row < end; ++row) {
            const uint8_t* source =
                stored.data + SourceRow(static_cast<int64_t>(row), head_dim) *
                                  blocks_per_row * stored_block;
            uint8_t* destination = out + row * blocks_per_row * block_bytes;
            for (int64_t b = 0; b < blocks_per_row; ++b) {
              WidenBlock(dtype, source + b * stored_block,
                         destination + b * block_bytes);
            }
          }
        });
    tensor.data = buffer.get();
    weights_.owned_buffers.push_back(std::move(buffer));
    return tensor;
  }

  // One GGUF block (f16 scale, [f16 minimum,] values) -> quant_blocks.h.
  static void WidenBlock(DType dtype, const uint8_t* in, uint8_t* out) {
    const auto half = [](const uint8_t* p) {
      uint16_t bits;
      std::memcpy(&bits, p, 2);
      return F16ToF32(bits);
    };
    switch (dtype) {
      case DType::kQ4_0: {
        auto* block = reinterpret_cast<BlockQ4_0*>(out);
        block->d = half(in);
        std::memcpy(block->qs, in + 2, sizeof(block->qs));
        return;
      }
      case DType::kQ4_1: {
        auto* block = reinterpret_cast<BlockQ4_1*>(out);
        block->d = half(in);
        block->m = half(in + 2);
        std::memcpy(block->qs, in + 4, sizeof(block->qs));
        return;
      }
      case DType::kQ8_0: {
        auto* block = reinterpret_cast<BlockQ8_0*>(out);
        block->d = half(in);
        std::memcpy(block->qs, in + 2, sizeof(block->qs));
        return;
      }
      default:
        LS_CHECK(false) << "not a block type: " << DTypeName(dtype);
    }
  }

  Tensor Dequantize(const GgufTensor& stored, int64_t rows, int64_t cols,
                    DType dtype, int64_t head_dim) {
    const GgufTypeInfo* info =
        FindGgufTypeInfo(static_cast<uint32_t>(stored.type));
    LS_CHECK(info != nullptr);
    const size_t row_bytes =
        static_cast<size_t>(cols / info->block_elements * info->block_bytes);
    Tensor tensor{dtype, {rows, cols}, nullptr};
    if (stored.dims.size() == 1) tensor.shape = {cols};  // A vector.
    const size_t count = static_cast<size_t>(rows * cols);
    std::unique_ptr<uint8_t[]> buffer =
        AllocateWeightBuffer(count * DTypeSize(dtype));
    uint8_t* out = buffer.get();
    ParallelForChunks(
        static_cast<size_t>(rows), 16, [&](size_t begin, size_t end) {
          std::vector<float> scratch(dtype == DType::kF32 ? 0 : cols);
          for (size_t row = begin; row < end; ++row) {
            const int64_t source =
                SourceRow(static_cast<int64_t>(row), head_dim);
            float* destination =
                dtype == DType::kF32
                    ? reinterpret_cast<float*>(out) + row * cols
                    : scratch.data();
            // Validated above: the type is supported and cols is a whole
            // number of blocks, so this cannot fail.
            const absl::Status status =
                DequantizeRow(stored.type, stored.data + source * row_bytes,
                              cols, destination);
            LS_CHECK(status.ok()) << status.message();
            if (dtype != DType::kF32) {
              ConvertElements(scratch.data(), DType::kF32,
                              out + row * cols * DTypeSize(dtype), dtype,
                              static_cast<size_t>(cols));
            }
          }
        });
    tensor.data = buffer.get();
    weights_.owned_buffers.push_back(std::move(buffer));
    return tensor;
  }

  const GgufFile& file_;
  ModelWeights& weights_;
  std::set<std::string> used_;
  const int64_t rope_head_dim_;
  const bool use_mmap_;
  const bool keep_blocks_;
  bool made_views_ = false;
};

}  // namespace

bool IsGgufModelPath(const std::string& path) {
  // Anything that exists and is not a directory is taken as a GGUF file, so
  // a FIFO or device named *.gguf is rejected by MappedFile::Open with the
  // reason rather than mistaken for a model directory.
  std::error_code error;
  return absl::EndsWith(path, ".gguf") &&
         std::filesystem::exists(path, error) &&
         !std::filesystem::is_directory(path, error);
}

absl::StatusOr<ModelConfig> GgufModelConfig(const GgufFile& file) {
  LS_ASSIGN_OR_RETURN(const std::string arch,
                      file.GetString("general.architecture"));
  std::string architecture;
  if (arch == "llama") {
    architecture = "LlamaForCausalLM";
  } else if (arch == "qwen2") {
    architecture = "Qwen2ForCausalLM";
  } else if (arch == "qwen3") {
    architecture = "Qwen3ForCausalLM";
  } else {
    return Unsupported(file, absl::StrCat("general.architecture '", arch,
                                          "' is not supported (supported: "
                                          "llama, qwen2, qwen3)"));
  }
  const std::string p = arch + ".";
  json document = json::object();
  document["architectures"] = json::array({architecture});
  LS_ASSIGN_OR_RETURN(const int64_t hidden,
                      file.GetInt(p + "embedding_length"));
  LS_ASSIGN_OR_RETURN(const int64_t heads,
                      file.GetInt(p + "attention.head_count"));
  document["hidden_size"] = hidden;
  document["num_attention_heads"] = heads;
  LS_ASSIGN_OR_RETURN(document["intermediate_size"],
                      file.GetInt(p + "feed_forward_length"));
  LS_ASSIGN_OR_RETURN(document["num_hidden_layers"],
                      file.GetInt(p + "block_count"));
  LS_ASSIGN_OR_RETURN(document["num_key_value_heads"],
                      IntOr(file, p + "attention.head_count_kv", heads));
  // key_length is the head dim when it is not hidden / heads (Qwen3).
  if (file.Find(p + "attention.key_length") != nullptr) {
    LS_ASSIGN_OR_RETURN(const int64_t key_length,
                        file.GetInt(p + "attention.key_length"));
    LS_ASSIGN_OR_RETURN(const int64_t value_length,
                        IntOr(file, p + "attention.value_length", key_length));
    if (value_length != key_length) {
      return Unsupported(
          file,
          absl::StrCat("key '", p, "attention.value_length' (", value_length,
                       ") differs from key_length (", key_length, ")"));
    }
    document["head_dim"] = key_length;
  }
  if (file.Find(p + "context_length") != nullptr) {
    LS_ASSIGN_OR_RETURN(document["max_position_embeddings"],
                        file.GetInt(p + "context_length"));
  }
  LS_ASSIGN_OR_RETURN(document["rms_norm_eps"],
                      file.GetFloat(p + "attention.layer_norm_rms_epsilon"));
  LS_ASSIGN_OR_RETURN(document["rope_theta"],
                      FloatOr(file, p + "rope.freq_base", 10000.0));
  if (file.Find(p + "rope.scaling.type") != nullptr) {
    LS_ASSIGN_OR_RETURN(const std::string type,
                        file.GetString(p + "rope.scaling.type"));
    if (type == "linear") {
      LS_ASSIGN_OR_RETURN(const double factor,
                          file.GetFloat(p + "rope.scaling.factor"));
      document["rope_scaling"] = {{"rope_type", "linear"}, {"factor", factor}};
    } else if (type != "none") {
      return Unsupported(file,
                         absl::StrCat("key '", p, "rope.scaling.type': '", type,
                                      "' is not supported (none, "
                                      "linear)"));
    }
  }
  if (file.FindTensor("rope_freqs.weight") != nullptr) {
    return Unsupported(file,
                       "tensor 'rope_freqs.weight' (per-dimension rope "
                       "frequency factors, e.g. Llama 3.1 scaling) is not "
                       "supported");
  }

  int64_t vocab = 0;
  if (file.Find(p + "vocab_size") != nullptr) {
    LS_ASSIGN_OR_RETURN(vocab, file.GetInt(p + "vocab_size"));
  } else if (file.Find("tokenizer.ggml.tokens") != nullptr) {
    LS_ASSIGN_OR_RETURN(vocab, file.GetArrayLength("tokenizer.ggml.tokens"));
  } else if (const GgufTensor* embed = file.FindTensor("token_embd.weight");
             embed != nullptr && embed->dims.size() == 2) {
    vocab = embed->dims[1];
  }
  document["vocab_size"] = vocab;
  document["tie_word_embeddings"] = file.FindTensor("output.weight") == nullptr;
  if (file.Find("tokenizer.ggml.bos_token_id") != nullptr) {
    LS_ASSIGN_OR_RETURN(document["bos_token_id"],
                        file.GetInt("tokenizer.ggml.bos_token_id"));
  }
  // llama.cpp stops at EOS and at EOT (end of turn) when they differ.
  json eos = json::array();
  for (const char* key :
       {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"}) {
    if (file.Find(key) == nullptr) continue;
    LS_ASSIGN_OR_RETURN(const int64_t id, file.GetInt(key));
    if (std::find(eos.begin(), eos.end(), json(id)) == eos.end()) {
      eos.push_back(id);
    }
  }
  if (!eos.empty()) document["eos_token_id"] = eos;

  LS_ASSIGN_OR_RETURN(ModelConfig config,
                      ParseModelConfig(document, file.path()));
  if (file.Find(p + "rope.dimension_count") != nullptr) {
    LS_ASSIGN_OR_RETURN(const int64_t rope_dims,
                        file.GetInt(p + "rope.dimension_count"));
    if (rope_dims != config.head_dim) {
      return Unsupported(
          file, absl::StrCat("key '", p, "rope.dimension_count' is ", rope_dims,
                             " but the head dim is ", config.head_dim,
                             " (partial rotary embeddings are not supported)"));
    }
  }
  config.torch_dtype = "gguf";
  return config;
}

absl::StatusOr<std::unique_ptr<ModelWeights>> LoadGgufWeights(
    const std::string& path, const LoadOptions& options) {
  if (options.matrix_dtype && *options.matrix_dtype != DType::kF32 &&
      *options.matrix_dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": ", DTypeName(*options.matrix_dtype),
        " matrices cannot be requested; request f32 or bf16, or none to "
        "keep the file's blocks"));
  }
  LS_ASSIGN_OR_RETURN(GgufFile file, GgufFile::Open(path));
  LS_ASSIGN_OR_RETURN(ModelConfig config, GgufModelConfig(file));
  LS_ASSIGN_OR_RETURN(const std::string arch,
                      file.GetString("general.architecture"));

  auto weights = std::make_unique<ModelWeights>();
  weights->config = config;
  weights->source = path;
  weights->synthetic = false;
  // Only the llama converter interleaves Q/K rows (Qwen's does not). By
  // default Q4_0/Q4_1/Q8_0 matrices stay in their blocks, which the kernels
  // compute on to the same bits as their exact f32 dequantization.
  GgufWeightBuilder builder(
      file, *weights, arch == "llama" ? config.head_dim : 0, options.use_mmap,
      /*keep_blocks=*/!options.matrix_dtype.has_value());
  DType dtype = DType::kF32;  // Other quantized types dequantize exactly.
  if (options.matrix_dtype) {
    dtype = *options.matrix_dtype;
  } else {
    LS_ASSIGN_OR_RETURN(
        const GgufTensor* first,
        builder.Lookup(absl::StrCat(kGgufTensorNames.layer_prefix, "0.",
                                    kGgufTensorNames.q_proj),
                       config.q_dim(), config.hidden_size));
    if (first->type == GgufType::kBF16) dtype = DType::kBF16;
  }
  LS_RETURN_IF_ERROR(
      BuildDecoderWeights(kGgufTensorNames, dtype, builder, *weights));
  // What the layers hold (a kept embedding may differ, e.g. Q8_0 beside
  // Q4_1 layers).
  weights->matrix_dtype = weights->layers.front().q_proj.dtype;

  const std::vector<std::string> unused = builder.Unused();
  if (!unused.empty()) {
    const size_t shown = std::min<size_t>(unused.size(), 5);
    LS_LOG(WARNING) << path << ": ignoring " << unused.size()
                    << " tensor(s) the model does not use: "
                    << absl::StrJoin(unused.begin(), unused.begin() + shown,
                                     ", ")
                    << (unused.size() > shown ? ", ..." : "");
  }
  for (const GgufTensor& tensor : file.tensors()) {
    weights->source_tensors.push_back(
        {tensor.name, GgufTypeName(tensor.type), tensor.dims});
  }
  SortSourceTensors(weights->source_tensors);
  // F32/BF16 matrices may be views into the mapping; its address survives
  // the move. Without mmap every tensor was copied and the mapping is
  // released with `file`.
  // Copied weights do not need the file: unmapping it keeps only the copies
  // resident.
  if (options.use_mmap && builder.made_views()) {
    weights->mapped_files.push_back(file.TakeMapping());
  }
  return weights;
}

}  // namespace litestage
