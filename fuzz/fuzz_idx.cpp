// libFuzzer target for the IDX reader: any bytes, raw or gzip, must parse or raise a
// tapegrad::Error, never crash, hang or allocate beyond what the input can hold.
#include <cstddef>
#include <cstdint>
#include <span>

#include "tapegrad/io/idx.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto d = tapegrad::io::parse_idx(std::span<const uint8_t>(data, size), "fuzz.idx");
    // What parsed must be self-consistent.
    if (static_cast<int64_t>(d.data.size()) != d.numel()) __builtin_trap();
    (void)d.shape();
  } catch (const tapegrad::Error&) {
  }
  return 0;
}
