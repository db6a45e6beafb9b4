// libFuzzer target for the checkpoint loader: parse any bytes as safetensors, then load the
// result into a small model and optimizer. Must succeed or raise a tapegrad::Error.
#include <cstddef>
#include <cstdint>
#include <span>

#include "fuzz_model.hpp"
#include "tapegrad/io/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::FuzzNet model;
  static fuzz::FuzzOptimizer optimizer;
  try {
    const auto file =
        tapegrad::io::parse_safetensors(std::span<const uint8_t>(data, size), "fuzz.safetensors");
    for (const auto& [name, t] : file.tensors) (void)tapegrad::io::shape_of(t).numel();
    tapegrad::io::restore_checkpoint(file, "fuzz.safetensors", model, optimizer);
  } catch (const tapegrad::Error&) {
  }
  return 0;
}
