#include "engine/backend/registry.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/backend/plugin.h"
#include "engine/util/check.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, BackendFactory> factories;  // Guarded by mutex.
};

Registry& GlobalRegistry() {
  static Registry* registry = new Registry();  // Never destroyed.
  return *registry;
}

absl::Status CheckOptions(const BackendOptions& options) {
  if (options.kv_cache_tokens <= 0 || options.kv_block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache_tokens and kv_block_size must be positive, got ",
                     options.kv_cache_tokens, " and ", options.kv_block_size));
  }
  // Block ids are int32 (KvBlockManager).
  if (options.kv_cache_tokens / options.kv_block_size >=
      std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--kv-cache-tokens ", options.kv_cache_tokens,
                     " needs more than 2^31 cache blocks"));
  }
  if (options.num_threads < 0 || options.num_threads > kMaxBackendThreads) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_threads must be in [0, ", kMaxBackendThreads,
                     "], got ", options.num_threads));
  }
  return absl::OkStatus();
}

// A device name becomes part of a file name: letters, digits and '_' only.
bool IsDeviceName(absl::string_view name) {
  if (name.empty() || name.size() > 32) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '_') return false;
  }
  return true;
}

std::string ExecutableDirectory() {
  std::error_code error;
  const std::filesystem::path exe =
      std::filesystem::read_symlink("/proc/self/exe", error);
  return error ? std::string() : exe.parent_path().string();
}

// Loads `path` and creates its backend. Handles are never closed: the
// backend's code must stay mapped for as long as any object of it lives.
absl::StatusOr<std::unique_ptr<Backend>> CreateFromPlugin(
    const std::string& path, absl::string_view device,
    const ModelWeights& weights, const BackendOptions& options) {
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    return absl::FailedPreconditionError(absl::StrCat(
        "backend plugin ", path, ": cannot load: ", why ? why : "unknown"));
  }
  auto entry = reinterpret_cast<LitestageBackendPluginEntry>(
      dlsym(handle, kBackendPluginSymbol));
  if (entry == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("backend plugin ", path, ": no entry point ",
                     kBackendPluginSymbol, " (not a litestage backend)"));
  }
  const LitestageBackendPlugin* plugin = entry();
  if (plugin == nullptr || plugin->abi_version != kBackendAbiVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "backend plugin ", path, ": ABI version ",
        plugin ? plugin->abi_version : 0, ", this build needs ",
        kBackendAbiVersion, "; rebuild the plugin with this litestage"));
  }
  if (plugin->layout_hash != BackendLayoutHash()) {
    return absl::FailedPreconditionError(
        absl::StrCat("backend plugin ", path,
                     ": built against other engine headers (layout hash ",
                     plugin->layout_hash, ", this build ", BackendLayoutHash(),
                     "); rebuild the plugin with this litestage"));
  }
  if (plugin->name == nullptr || device != plugin->name ||
      plugin->create == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "backend plugin ", path, ": is backend '",
        plugin->name ? plugin->name : "", "', not '", device, "'"));
  }
  char error[512] = {0};
  Backend* backend = plugin->create(&weights, &options, error, sizeof(error));
  if (backend == nullptr) {
    error[sizeof(error) - 1] = '\0';
    return absl::FailedPreconditionError(absl::StrCat(
        "device '", device, "' (", path,
        "): ", error[0] ? error : "the plugin created no backend"));
  }
  return std::unique_ptr<Backend>(backend);
}

absl::StatusOr<std::unique_ptr<Backend>> CreateNamed(
    const std::string& device, const ModelWeights& weights,
    const BackendOptions& options) {
  BackendFactory factory = nullptr;
  {
    Registry& registry = GlobalRegistry();
    std::lock_guard<std::mutex> lock(registry.mutex);
    auto it = registry.factories.find(device);
    if (it != registry.factories.end()) factory = it->second;
  }
  if (factory != nullptr) return factory(weights, options);
  if (!IsDeviceName(device)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown device '", device, "' (expected auto, ",
        absl::StrJoin(RegisteredBackends(), ", "), " or a plugin's name)"));
  }
  const std::vector<std::string> paths = BackendPluginPaths(device);
  for (const std::string& path : paths) {
    std::error_code error;
    if (!std::filesystem::exists(path, error)) continue;
    return CreateFromPlugin(path, device, weights, options);
  }
  return absl::NotFoundError(
      absl::StrCat("device '", device, "': no backend plugin; looked for ",
                   absl::StrJoin(paths, ", "),
                   " (set LITESTAGE_BACKEND_PATH, or use --device cpu)"));
}

}  // namespace

bool RegisterBackend(const std::string& name, BackendFactory factory) {
  Registry& registry = GlobalRegistry();
  std::lock_guard<std::mutex> lock(registry.mutex);
  LS_CHECK(registry.factories.emplace(name, factory).second)
      << "backend '" << name << "' registered twice";
  return true;
}

std::vector<std::string> RegisteredBackends() {
  Registry& registry = GlobalRegistry();
  std::lock_guard<std::mutex> lock(registry.mutex);
  std::vector<std::string> names;
  for (const auto& [name, factory] : registry.factories) names.push_back(name);
  return names;
}

std::vector<std::string> BackendPluginPaths(absl::string_view name) {
  const std::string file = absl::StrCat("liblitestage_backend_", name, ".so");
  std::vector<std::string> paths;
  if (const char* env = std::getenv("LITESTAGE_BACKEND_PATH")) {
    for (absl::string_view dir : absl::StrSplit(env, ':', absl::SkipEmpty())) {
      paths.push_back(
          (std::filesystem::path(std::string(dir)) / file).string());
    }
  }
  const std::string exe_dir = ExecutableDirectory();
  if (!exe_dir.empty()) {
    paths.push_back((std::filesystem::path(exe_dir) / file).string());
    paths.push_back(
        (std::filesystem::path(exe_dir) / ".." / "lib" / "litestage" / file)
            .lexically_normal()
            .string());
  }
  return paths;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(
    const std::string& device, const ModelWeights& weights,
    const BackendOptions& options) {
  LS_RETURN_IF_ERROR(CheckOptions(options));
  if (device != "auto") return CreateNamed(device, weights, options);
  absl::StatusOr<std::unique_ptr<Backend>> gpu =
      CreateNamed("cuda", weights, options);
  if (gpu.ok()) return gpu;
  LS_LOG(INFO) << "device auto: " << gpu.status().message() << "; using cpu";
  return CreateNamed("cpu", weights, options);
}

}  // namespace litestage
