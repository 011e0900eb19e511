// gtest main for gdr2's tests. ctest passes each test's RapidCheck case count as GDR2_RC_CASES; it becomes
// RapidCheck's max_success unless the caller's RC_PARAMS already sets one (so RC_PARAMS="seed=..." or
// "reproduce=..." from a failure report, or "max_success=...", always win).
#include <cstdlib>
#include <string>
#include <gtest/gtest.h>

int main(int argc, char** argv) {
  const char* cases = std::getenv("GDR2_RC_CASES");
  const char* params = std::getenv("RC_PARAMS");
  std::string merged = params ? params : "";
  if (cases && merged.find("max_success") == std::string::npos) {
    merged += (merged.empty() ? "" : " ") + std::string("max_success=") + cases;
    setenv("RC_PARAMS", merged.c_str(), 1);
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
