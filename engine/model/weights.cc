#include "engine/model/weights.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <system_error>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/convert.h"
#include "engine/model/fingerprint.h"
#include "engine/model/gguf_weights.h"
#include "engine/model/safetensors.h"
#include "engine/model/weight_layout.h"
#include "engine/util/check.h"
#include "engine/util/json_util.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

// A tensor found in one of the model's files.
struct FoundTensor {
  const SafetensorsTensor* tensor;
  const std::string* path;  // The file holding it, for messages.
};

// All tensors of a model directory across its shards.
struct TensorSet {
  std::vector<SafetensorsFile> files;
  absl::flat_hash_map<std::string, FoundTensor> by_name;
  std::string description;  // "<dir>/model.safetensors" or the index path.
};

bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos &&
         name.find("..") == std::string::npos &&
         name.find('\0') == std::string::npos;
}

// Indexes the tensors of every file in `set.files` by name; a name in two
// files is ambiguous and rejected.
absl::Status IndexTensors(TensorSet& set) {
  for (const SafetensorsFile& file : set.files) {
    for (const SafetensorsTensor& tensor : file.tensors()) {
      auto [it, inserted] =
          set.by_name.emplace(tensor.name, FoundTensor{&tensor, &file.path()});
      if (!inserted) {
        return absl::InvalidArgumentError(
            absl::StrCat(file.path(), ": tensor '", tensor.name,
                         "' also appears in ", *it->second.path));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorSet> OpenShardedModel(const std::string& model_dir,
                                           const std::string& index_path) {
  LS_ASSIGN_OR_RETURN(const json index,
                      ReadJsonFile(index_path, kMaxMetadataFileBytes));
  if (!index.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": must be a JSON object"));
  }
  auto map_it = index.find("weight_map");
  if (map_it == index.end() || !map_it->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": 'weight_map' must be an object"));
  }
  // Tensor name -> shard file name, validated before any file is opened.
  std::map<std::string, std::string> shard_of;
  std::set<std::string> shard_names;
  for (auto it = map_it->begin(); it != map_it->end(); ++it) {
    if (!it->is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": weight_map entry for tensor '", it.key(),
                       "' must be a file name string"));
    }
    std::string shard = it->get<std::string>();
    if (!IsPlainFileName(shard)) {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path, ": tensor '", it.key(), "' maps to '", shard,
          "', which is not a plain file name inside the model directory"));
    }
    shard_names.insert(shard);
    shard_of.emplace(it.key(), std::move(shard));
  }
  if (shard_names.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": 'weight_map' is empty"));
  }

  TensorSet set;
  set.description = index_path;
  for (const std::string& shard : shard_names) {
    const std::string shard_path = (fs::path(model_dir) / shard).string();
    absl::StatusOr<SafetensorsFile> file = OpenSafetensors(shard_path);
    if (!file.ok()) {
      return absl::Status(file.status().code(),
                          absl::StrCat(file.status().message(),
                                       " (shard listed in ", index_path, ")"));
    }
    set.files.push_back(*std::move(file));
  }
  LS_RETURN_IF_ERROR(IndexTensors(set));
  // The index must agree with the shards it names.
  for (const auto& [name, shard] : shard_of) {
    auto it = set.by_name.find(name);
    const std::string shard_path = (fs::path(model_dir) / shard).string();
    if (it == set.by_name.end() || *it->second.path != shard_path) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": tensor '", name, "' is listed in shard ",
                       shard_path, " but that file does not hold it"));
    }
  }
  return set;
}

absl::StatusOr<TensorSet> OpenModelTensors(const std::string& model_dir) {
  const std::string single_path = (fs::path(model_dir) / kSingleFile).string();
  const std::string index_path = (fs::path(model_dir) / kIndexFile).string();
  std::error_code error;
  if (fs::exists(single_path, error)) {
    LS_ASSIGN_OR_RETURN(SafetensorsFile file, OpenSafetensors(single_path));
    TensorSet set;
    set.description = single_path;
    set.files.push_back(std::move(file));
    LS_RETURN_IF_ERROR(IndexTensors(set));
    return set;
  }
  if (fs::exists(index_path, error)) {
    return OpenShardedModel(model_dir, index_path);
  }
  return absl::NotFoundError(absl::StrCat(model_dir, ": no ", kSingleFile,
                                          " or ", kIndexFile, " found"));
}

// Builds the validated, converted tensors of ModelWeights from a TensorSet.
class WeightBuilder {
 public:
  // `use_mmap` false: every tensor is copied, none is a view into a file.
  WeightBuilder(const TensorSet& set, ModelWeights& weights, bool use_mmap)
      : set_(set), weights_(weights), use_mmap_(use_mmap) {}

  // The stored tensor `name` after checking it exists, has a usable dtype and
  // the expected shape.
  absl::StatusOr<FoundTensor> Lookup(const std::string& name,
                                     const std::vector<int64_t>& shape) {
    auto it = set_.by_name.find(name);
    if (it == set_.by_name.end()) {
      return absl::NotFoundError(
          absl::StrCat(set_.description, ": missing tensor '", name,
                       "' (expected shape ", ShapeToString(shape), ")"));
    }
    used_.insert(name);
    const SafetensorsTensor& tensor = *it->second.tensor;
    if (!tensor.dtype) {
      return absl::InvalidArgumentError(absl::StrCat(
          *it->second.path, ": tensor '", name, "' has unsupported dtype ",
          tensor.dtype_name, " (expected F32, F16 or BF16)"));
    }
    if (tensor.shape != shape) {
      return absl::InvalidArgumentError(
          absl::StrCat(*it->second.path, ": tensor '", name, "' has shape ",
                       ShapeToString(tensor.shape), " but the config implies ",
                       ShapeToString(shape)));
    }
    return it->second;
  }

  bool Has(const std::string& name) const {
    return set_.by_name.contains(name);
  }

  // A 1-D weight as an owned fp32 copy.
  absl::StatusOr<Tensor> Vector(const std::string& name, int64_t size) {
    LS_ASSIGN_OR_RETURN(FoundTensor found, Lookup(name, {size}));
    return Convert(*found.tensor, DType::kF32);
  }

  // A matrix in `dtype`: a view into the mapping when the stored dtype
  // matches and the bytes are aligned, a converted copy otherwise.
  absl::StatusOr<Tensor> Matrix(const std::string& name, int64_t rows,
                                int64_t cols, DType dtype) {
    LS_ASSIGN_OR_RETURN(FoundTensor found, Lookup(name, {rows, cols}));
    const SafetensorsTensor& stored = *found.tensor;
    const auto address = reinterpret_cast<uintptr_t>(stored.data);
    if (use_mmap_ && *stored.dtype == dtype &&
        address % DTypeSize(dtype) == 0) {
      return Tensor{dtype, stored.shape, stored.data};
    }
    return Convert(stored, dtype);
  }

  // The stored dtype of `name`, widened to what the kernels read.
  absl::StatusOr<DType> NaturalMatrixDType(const std::string& name,
                                           int64_t rows, int64_t cols) {
    LS_ASSIGN_OR_RETURN(FoundTensor found, Lookup(name, {rows, cols}));
    const DType stored = *found.tensor->dtype;
    return stored == DType::kF16 ? DType::kF32 : stored;
  }

  std::vector<std::string> Unused() const {
    std::vector<std::string> names;
    for (const auto& [name, found] : set_.by_name) {
      if (!used_.contains(name)) names.push_back(name);
    }
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  Tensor Convert(const SafetensorsTensor& stored, DType dtype) {
    Tensor tensor{dtype, stored.shape, nullptr};
    const size_t count = static_cast<size_t>(tensor.numel());
    std::unique_ptr<uint8_t[]> buffer =
        AllocateWeightBuffer(count * DTypeSize(dtype));
    ConvertElements(stored.data, *stored.dtype, buffer.get(), dtype, count);
    tensor.data = buffer.get();
    weights_.owned_buffers.push_back(std::move(buffer));
    return tensor;
  }

  const TensorSet& set_;
  ModelWeights& weights_;
  const bool use_mmap_;
  std::set<std::string> used_;
};

// The dtype of every matrix: the caller's choice, else the stored dtype of
// the first layer's q_proj (F16 widened to F32, which the kernels read).
absl::StatusOr<DType> ChooseMatrixDType(const ModelConfig& config,
                                        const LoadOptions& options,
                                        WeightBuilder& builder) {
  if (options.matrix_dtype) return *options.matrix_dtype;
  return builder.NaturalMatrixDType(
      absl::StrCat(kHuggingFaceTensorNames.layer_prefix, "0.",
                   kHuggingFaceTensorNames.q_proj),
      config.q_dim(), config.hidden_size);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelWeights>> LoadModelWeights(
    const std::string& model_dir, const LoadOptions& options) {
  if (options.matrix_dtype && *options.matrix_dtype != DType::kF32 &&
      *options.matrix_dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_dir, ": ", DTypeName(*options.matrix_dtype),
                     " matrices are not supported; request f32 or bf16"));
  }
  if (IsGgufModelPath(model_dir)) return LoadGgufWeights(model_dir, options);
  LS_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  LS_ASSIGN_OR_RETURN(TensorSet set, OpenModelTensors(model_dir));

  auto weights = std::make_unique<ModelWeights>();
  weights->config = config;
  weights->source = model_dir;
  weights->synthetic = false;
  WeightBuilder builder(set, *weights, options.use_mmap);
  LS_ASSIGN_OR_RETURN(const DType dtype,
                      ChooseMatrixDType(config, options, builder));
  LS_RETURN_IF_ERROR(
      BuildDecoderWeights(kHuggingFaceTensorNames, dtype, builder, *weights));

  const std::vector<std::string> unused = builder.Unused();
  if (!unused.empty()) {
    const size_t shown = std::min<size_t>(unused.size(), 5);
    LS_LOG(WARNING) << set.description << ": ignoring " << unused.size()
                    << " tensor(s) the model does not use: "
                    << absl::StrJoin(unused.begin(), unused.begin() + shown,
                                     ", ")
                    << (unused.size() > shown ? ", ..." : "");
  }
  for (const auto& [name, found] : set.by_name) {
    weights->source_tensors.push_back(
        {name, found.tensor->dtype_name, found.tensor->shape});
  }
  SortSourceTensors(weights->source_tensors);
  // Views point into the mappings; moving a MappedFile keeps its address.
  // Without mmap nothing points into them and they are unmapped with `set`,
  // so truncating or replacing the files cannot fault the server (SIGBUS).
  if (options.use_mmap) {
    for (SafetensorsFile& file : set.files) {
      weights->mapped_files.push_back(file.TakeMapping());
    }
  }
  return weights;
}

}  // namespace litestage
