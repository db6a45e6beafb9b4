#pragma once
/// \file
/// FashionMNIST: Zalando's 28x28 grey images of 10 clothing classes (60000 train, 10000 test),
/// in IDX files, as torchvision.datasets.FashionMNIST. Images come as floats in [0, 1] (pixel /
/// 255), [N, 1, 28, 28] (NCHW, for convolutions) or [N, 784] (for MLPs); labels as int64.
///
/// Where the files are looked for, first match wins:
///   1. the directory passed to the constructor (a program's --data-dir flag), if not empty;
///   2. else the directory in $TAPEGRAD_FASHION_MNIST_DIR, if set;
///   3. else /usr/share/datasets/fashion-mnist, where Debian's dataset-fashion-mnist package
///      installs them.
/// A directory given explicitly (1 or 2) is the only one searched: a mistyped flag should fail,
/// not silently fall back to other data. Each file may be gzip-compressed (".gz") or not.

#include <sys/stat.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "tapegrad/error.hpp"
#include "tapegrad/io/idx.hpp"
#include "tapegrad/tensor.hpp"

namespace tapegrad::io {

/// The training (60000 images) or the test set (10000 images).
enum class Split { Train, Test };
/// The image tensor's layout.
enum class ImageLayout {
  NCHW,  ///< [N, 1, 28, 28]
  Flat   // [N, 784]
};

/// Fashion-MNIST, torchvision.datasets.FashionMNIST: 28x28 grey images of 10 clothing classes as
/// floats in [0, 1] and int64 labels (see the file's description for where the files are looked
/// for).
class FashionMNIST {
 public:
  /// The names of the classes, by label.
  static constexpr std::array<std::string_view, 10> class_names = {
      "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
      "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  /// Number of classes.
  static constexpr int num_classes = 10;
  ///@{
  /// Image height and width.
  static constexpr int64_t height = 28, width = 28;
  ///@}
  /// Where Debian's dataset-fashion-mnist package installs the files.
  static constexpr const char* default_directory = "/usr/share/datasets/fashion-mnist";
  /// The environment variable naming a directory to read from.
  static constexpr const char* environment_variable = "TAPEGRAD_FASHION_MNIST_DIR";

  Tensor<float> images;         ///< [N, 1, 28, 28] or [N, 784], values in [0, 1]
  std::vector<int64_t> labels;  ///< N class indices in 0..9
  std::string directory;        ///< where the files were found

  /// Reads split from dir (or the directory the search order finds) in layout; IOError if the files
  /// are missing or malformed.
  explicit FashionMNIST(Split split, const std::string& dir = "",
                        ImageLayout layout = ImageLayout::NCHW) {
    directory = find_directory(split, dir);
    const std::string prefix = split == Split::Train ? "train" : "t10k";
    const std::string image_path = existing(directory, prefix + "-images-idx3-ubyte");
    const std::string label_path = existing(directory, prefix + "-labels-idx1-ubyte");

    IdxData im = read_idx(image_path);
    if (im.dims.size() != 3 || im.dims[1] != height || im.dims[2] != width)
      tapegrad::detail::fail<IOError>(image_path, ": images of shape ", im.shape(),
                                      ", expected [N,28,28]");
    IdxData lb = read_idx(label_path);
    if (lb.dims.size() != 1 || lb.dims[0] != im.dims[0])
      tapegrad::detail::fail<IOError>(label_path, ": labels of shape ", lb.shape(), " for ",
                                      im.dims[0], " images in ", image_path);

    const int64_t n = im.dims[0];
    images = layout == ImageLayout::NCHW ? Tensor<float>(Shape{n, 1, height, width})
                                         : Tensor<float>(Shape{n, height * width});
    float* dst = images.data();
    for (size_t i = 0; i < im.data.size(); ++i) dst[i] = float(im.data[i]) * (1.0f / 255.0f);

    labels.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t y = lb.data[static_cast<size_t>(i)];
      if (y >= num_classes)
        tapegrad::detail::fail<IOError>(label_path, ": label ", int{y}, " of item ", i, " at byte ",
                                        8 + i, " is not a class in 0..9");
      labels[static_cast<size_t>(i)] = y;
    }
  }

  /// Number of images.
  int64_t size() const { return static_cast<int64_t>(labels.size()); }

  /// The directory that holds the split's files, following the search order above, or an
  /// IOError that lists the directories searched and says how to install the data.
  static std::string find_directory(Split split, const std::string& dir = "") {
    const std::string prefix = split == Split::Train ? "train" : "t10k";
    const char* env = std::getenv(environment_variable);
    std::string candidate, why;
    if (!dir.empty()) {
      candidate = dir, why = "the directory argument";
    } else if (env && *env) {
      candidate = env, why = std::string("$") + environment_variable;
    } else {
      candidate = default_directory, why = "the default";
    }
    const std::string names[] = {prefix + "-images-idx3-ubyte", prefix + "-labels-idx1-ubyte"};
    std::string missing;
    for (const auto& n : names)
      if (existing(candidate, n, false).empty())
        missing += (missing.empty() ? "" : ", ") + n + "[.gz]";
    if (missing.empty()) return candidate;
    tapegrad::detail::fail<IOError>(
        "FashionMNIST: ", missing, " not found; searched ", candidate, " (", why,
        "). Install the dataset with `sudo apt-get install dataset-fashion-mnist` (it goes to ",
        default_directory, "), or point ", environment_variable,
        " or the data directory option at a folder holding the files");
  }

 private:
  static bool is_file(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
  }
  // dir/name.gz or dir/name, whichever exists; "" (or an IOError if must) when neither.
  static std::string existing(const std::string& dir, const std::string& name, bool must = true) {
    const std::string base = dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
    if (is_file(base + ".gz")) return base + ".gz";
    if (is_file(base)) return base;
    if (must) tapegrad::detail::fail<IOError>("FashionMNIST: ", base, "[.gz] not found");
    return "";
  }
};

}  // namespace tapegrad::io
