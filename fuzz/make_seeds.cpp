// Writes seed inputs for the fuzzers: valid IDX files (raw and gzip) and valid checkpoints of
// fuzz::FuzzNet, so fuzzing starts from deep inside the formats.
//   make_seeds <idx seed dir> <checkpoint seed dir>
#include <zlib.h>

#include <cstdio>
#include <string>
#include <vector>

#include "fuzz_model.hpp"
#include "tapegrad/io/checkpoint.hpp"

namespace {

std::vector<uint8_t> idx(const std::vector<uint32_t>& dims) {
  std::vector<uint8_t> b = {0, 0, 8, static_cast<uint8_t>(dims.size())};
  size_t n = 1;
  for (uint32_t d : dims) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(d >> s));
    n *= d;
  }
  for (size_t i = 0; i < n; ++i) b.push_back(static_cast<uint8_t>(i * 37));
  return b;
}

void write(const std::string& path, const std::vector<uint8_t>& b, bool gzip) {
  if (gzip) {
    gzFile f = gzopen(path.c_str(), "wb9");
    gzwrite(f, b.data(), static_cast<unsigned>(b.size()));
    gzclose(f);
  } else {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    std::fwrite(b.data(), 1, b.size(), f);
    std::fclose(f);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: make_seeds <idx dir> <checkpoint dir>\n");
    return 2;
  }
  const std::string idx_dir = argv[1], ckpt_dir = argv[2];
  write(idx_dir + "/labels.idx", idx({5}), false);
  write(idx_dir + "/images.idx", idx({2, 3, 4}), false);
  write(idx_dir + "/images.idx.gz", idx({3, 2, 2}), true);

  fuzz::FuzzNet model;
  fuzz::FuzzOptimizer opt;
  opt.state = {{"step", tapegrad::Tensor<int64_t>::scalar(3)},
               {"exp_avg.0", tapegrad::Tensor<float>::zeros({2, 3})}};
  tapegrad::io::save_checkpoint(ckpt_dir + "/model.safetensors", model);
  tapegrad::io::save_checkpoint(ckpt_dir + "/model_opt.safetensors", model, opt, {{"epoch", "2"}});
  tapegrad::io::NamedTensors mixed = {{"a", tapegrad::Tensor<double>::from({1.0, 2.0})},
                                      {"b", tapegrad::Tensor<float>::zeros({0, 2})},
                                      {"c", tapegrad::Tensor<int64_t>::from({-1, 7})}};
  tapegrad::io::save_safetensors(ckpt_dir + "/mixed.safetensors", mixed);
  return 0;
}
