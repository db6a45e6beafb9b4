// examples/resume_epoch.hpp: the epoch fashion_mlp, fashion_resnet and fashion_ddp resume after,
// read from a checkpoint's metadata that may have been edited by hand.
#include <gtest/gtest.h>

#include <string>

#include "../examples/resume_epoch.hpp"
#include "test_util.hpp"

using examples::resumed_epoch;
using tapegrad::testing::expect_error_containing;

TEST(ExampleResumeEpoch, ReadsTheEpochEntry) {
  EXPECT_EQ(resumed_epoch({{"example", "fashion_mlp"}, {"epoch", "3"}}, "a.safetensors"), 3);
  EXPECT_EQ(resumed_epoch({{"epoch", "1"}}, "a.safetensors"), 1);
  EXPECT_EQ(resumed_epoch({{"epoch", "2147483646"}}, "a.safetensors"), 2147483646);
}

TEST(ExampleResumeEpoch, AMissingOrBadEntryNamesTheFileAndTheValue) {
  expect_error_containing<tapegrad::IOError>(
      [] {
        resumed_epoch({{"example", "fashion_mlp"}}, "ckpt/a.safetensors");
      },
      {"ckpt/a.safetensors", "no \"epoch\" entry"});
  // Not a decimal number, not a whole one, below 1, or one whose successor is no int (the
  // example trains from epoch + 1). fashion_ddp's std::stoi threw its bare "stoi" for some of
  // them and read others as a number (3x as 3, -1 as -1).
  for (const std::string bad :
       {"", "x", "3x", " 3", "+3", "3.0", "0", "-1", "2147483647", "99999999999999999999"}) {
    SCOPED_TRACE("epoch \"" + bad + "\"");
    expect_error_containing<tapegrad::IOError>(
        [&] {
          resumed_epoch({{"epoch", bad}}, "ckpt/a.safetensors");
        },
        {"ckpt/a.safetensors", "\"epoch\" entry \"" + bad + "\"", "from 1 to 2147483646"});
  }
  // A long value is shown by its start.
  const std::string long_value(5000, '7');
  expect_error_containing<tapegrad::IOError>(
      [&] {
        resumed_epoch({{"epoch", long_value}}, "a.safetensors");
      },
      {"\"" + std::string(40, '7') + "...\""});
}
