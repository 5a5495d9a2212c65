#include "engine/util/process_memory.h"

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>

#include "gtest/gtest.h"

namespace litestage {
namespace {

// Touching 64 MiB raises the resident size by about that much, and the
// peak never falls below the current size.
TEST(ProcessMemoryTest, TracksTouchedPages) {
  const std::optional<int64_t> before = ResidentBytes();
  ASSERT_TRUE(before.has_value());
  EXPECT_GT(*before, 0);
  constexpr size_t kBytes = 64 << 20;
  auto buffer = std::make_unique<char[]>(kBytes);
  std::memset(buffer.get(), 1, kBytes);
  const std::optional<int64_t> after = ResidentBytes();
  ASSERT_TRUE(after.has_value());
  EXPECT_GE(*after - *before, static_cast<int64_t>(kBytes) * 9 / 10);
  const std::optional<int64_t> peak = PeakResidentBytes();
  ASSERT_TRUE(peak.has_value());
  EXPECT_GE(*peak, *after);
  EXPECT_EQ(buffer[kBytes - 1], 1);
}

}  // namespace
}  // namespace litestage
