#pragma once
// Peak step memory as the LibTorch peer measures it (its mem_mb): the peak resident set while
// the steps run minus the resident set just before them. Linux only (/proc/self).
#include <fstream>
#include <sstream>
#include <string>

namespace rss {

// A figure of /proc/self/status ("VmRSS:", "VmHWM:"), in MB.
inline double status_mb(const std::string& key) {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind(key, 0) == 0) {
      std::istringstream in(line.substr(key.size()));
      double kb = 0;
      in >> kb;
      return kb / 1024.0;
    }
  return 0;
}

// Construct just before the steps; added_mb() after them. Run one measurement per process:
// memory a previous benchmark freed stays resident and hides what this one adds.
class StepMemory {
 public:
  StepMemory() {
    std::ofstream("/proc/self/clear_refs") << "5";  // the peak resident set := the current one
    base_ = status_mb("VmRSS:");
  }
  double added_mb() const { return status_mb("VmHWM:") - base_; }

 private:
  double base_ = 0;
};

}  // namespace rss
