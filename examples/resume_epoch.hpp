#pragma once
// The epoch a training example resumes after: the "epoch" entry the examples write into their
// checkpoints' metadata, checked, since the file may have been edited by hand or written by
// another program.

#include <charconv>
#include <climits>
#include <cstdio>
#include <string>
#include <system_error>

#include "tapegrad/error.hpp"
#include "tapegrad/io/safetensors.hpp"

namespace examples {

// The number of epochs done (1 to INT_MAX - 1, so that the next one is an int) stored under
// "epoch" in the metadata of the checkpoint at `path`; IOError naming the file and the entry when
// it is missing or not such a decimal number.
inline int resumed_epoch(const tapegrad::io::Metadata& meta, const std::string& path) {
  for (const auto& [key, value] : meta) {
    if (key != "epoch") continue;
    int epoch = 0;
    const char* end = value.data() + value.size();
    const auto [stop, error] = std::from_chars(value.data(), end, epoch);
    if (error == std::errc() && stop == end && epoch >= 1 && epoch < INT_MAX) return epoch;
    // A hand-edited entry may be long: the message shows its start.
    const std::string shown = value.size() > 40 ? value.substr(0, 40) + "..." : value;
    throw tapegrad::IOError(path + ": the checkpoint's \"epoch\" entry \"" + shown +
                            "\" is not a number of epochs from 1 to " +
                            std::to_string(INT_MAX - 1));
  }
  throw tapegrad::IOError(path + ": the checkpoint's metadata has no \"epoch\" entry");
}

// Says so when a resumed run has nothing left to train (`done` of `epochs` epochs).
inline void say_if_nothing_to_do(int done, int epochs) {
  if (done >= epochs)
    std::printf("Nothing to do: the checkpoint already has %d of %d epochs (raise --epochs)\n",
                done, epochs);
}

}  // namespace examples
