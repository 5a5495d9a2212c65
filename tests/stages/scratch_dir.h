// A per-test scratch directory under the test temp dir, removed afterwards,
// for tests that write small (often malformed) input files.
#ifndef LITESTAGE_TESTS_STAGES_SCRATCH_DIR_H_
#define LITESTAGE_TESTS_STAGES_SCRATCH_DIR_H_

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace litestage {

class ScratchDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const ::testing::TestInfo* test =
        ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("litestage_", test->test_suite_name(), "_",
                        test->name(), "_", getpid());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Writes `content` to file `name` in the directory; returns its path.
  std::string Write(const std::string& name, const std::string& content) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }

  std::filesystem::path dir_;
};

}  // namespace litestage

#endif  // LITESTAGE_TESTS_STAGES_SCRATCH_DIR_H_
