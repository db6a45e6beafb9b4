#pragma once
/// \file
/// LinePlot: a line chart written as a standalone SVG file (no plotting dependency), readable in
/// any browser: several named series, a linear or log10 y axis, ticks with labels, axis titles,
/// a title and a legend.
///
///   diag::LinePlot plot;
///   plot.title("Gradient norm per layer at initialisation").x_label("layer").y_label("norm")
///       .log_y();
///   plot.add("sigmoid, default init", layers, norms_a).add("ReLU, He", layers, norms_b);
///   plot.save("out/vanishing.svg");
///
/// On a log axis, values that cannot be drawn (zero, negative, NaN, Inf) are skipped and break
/// the line; on a linear axis NaN and Inf do. Ticks of a log axis are whole decades (1e-12 ...
/// 1e0), thinned to at most about 12 labels. save() writes atomically (tmp + rename).
///
/// y_limits(lo, hi) fixes the y range instead of fitting it to the data (matplotlib's ylim):
/// lines leaving it are cut at the frame, so one diverging series (a loss of 1e20) does not
/// flatten all the others.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tapegrad/error.hpp"
#include "tapegrad/io/atomic_file.hpp"

namespace tapegrad::diag {

/// A line chart written as a standalone SVG file: named series, linear or log10 y axis, title, axis
/// labels and legend. Setters chain.
class LinePlot {
 public:
  /// The chart's title.
  LinePlot& title(std::string t) { return title_ = std::move(t), *this; }
  /// The x axis' title.
  LinePlot& x_label(std::string t) { return x_label_ = std::move(t), *this; }
  /// The y axis' title.
  LinePlot& y_label(std::string t) { return y_label_ = std::move(t), *this; }
  /// A log10 y axis (on) or a linear one.
  LinePlot& log_y(bool on = true) { return log_y_ = on, *this; }
  /// A fixed y range (data units, also on a log axis); lo < hi, both finite (and > 0 on a log
  /// axis, checked when the plot is drawn).
  LinePlot& y_limits(double lo, double hi) {
    if (!(lo < hi) || !std::isfinite(lo) || !std::isfinite(hi))
      tapegrad::detail::fail<ValueError>("LinePlot::y_limits: (", lo, ", ", hi,
                                         ") is not a finite range with lo < hi");
    return y_limits_ = {lo, hi}, *this;
  }
  /// The image size in pixels; below 200x150 throws ValueError.
  LinePlot& size(int width, int height) {
    if (width < 200 || height < 150)
      tapegrad::detail::fail<ValueError>("LinePlot: size ", width, "x", height,
                                         " is below the minimum 200x150");
    return width_ = width, height_ = height, *this;
  }

  /// A series of points (x[i], y[i]).
  LinePlot& add(std::string name, std::vector<double> x, std::vector<double> y) {
    if (x.size() != y.size())
      tapegrad::detail::fail<ValueError>("LinePlot::add: series \"", name, "\" has ", x.size(),
                                         " x values and ", y.size(), " y values");
    series_.push_back({std::move(name), std::move(x), std::move(y)});
    return *this;
  }
  /// A series at x = 1, 2, ..., n (layers, epochs).
  LinePlot& add(std::string name, std::vector<double> y) {
    std::vector<double> x(y.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = double(i + 1);
    return add(std::move(name), std::move(x), std::move(y));
  }

  /// Number of series added.
  size_t num_series() const { return series_.size(); }

  /// Writes svg() to path atomically (IOError on failure).
  void save(const std::string& path) const { io::write_file_atomically(path, svg()); }

  /// The chart as SVG text.
  std::string svg() const {
    // ---- data ranges over the drawable points ----
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    for (const auto& s : series_)
      for (size_t i = 0; i < s.x.size(); ++i)
        if (drawable(s.x[i], s.y[i])) {
          xmin = std::min(xmin, s.x[i]), xmax = std::max(xmax, s.x[i]);
          const double y = log_y_ ? std::log10(s.y[i]) : s.y[i];
          ymin = std::min(ymin, y), ymax = std::max(ymax, y);
        }
    const bool empty = !(xmin <= xmax);
    if (empty) xmin = 0, xmax = 1, ymin = log_y_ ? -1 : 0, ymax = log_y_ ? 0 : 1;
    if (xmin == xmax) widen(xmin, xmax);

    if (y_limits_) {
      if (log_y_ && !(y_limits_->first > 0))
        tapegrad::detail::fail<ValueError>("LinePlot: y_limits (", y_limits_->first, ", ",
                                           y_limits_->second, ") on a log axis must be > 0");
      ymin = log_y_ ? std::log10(y_limits_->first) : y_limits_->first;
      ymax = log_y_ ? std::log10(y_limits_->second) : y_limits_->second;
    }

    std::vector<Tick> xt = linear_ticks(xmin, xmax, 8, false);
    std::vector<Tick> yt;
    double y0, y1;  // axis range (log10 units on a log axis)
    if (log_y_) {
      y0 = std::floor(ymin), y1 = std::ceil(ymax);
      if (y0 == y1) y0 -= 1, y1 += 1;
      if (y_limits_) y0 = ymin, y1 = ymax;
      const int decades = static_cast<int>(y1 - y0);
      const int every = std::max(1, (decades + 11) / 12);
      for (int e = static_cast<int>(y0); e <= static_cast<int>(y1); ++e) {
        const bool major = e % every == 0;  // 1e0 is labelled when in range
        yt.push_back({double(e), major ? "1e" + std::to_string(e) : "", major});
      }
    } else {
      if (ymin == ymax) widen(ymin, ymax);
      yt = linear_ticks(ymin, ymax, 7, !y_limits_);
      y0 = std::min(ymin, yt.front().v), y1 = std::max(ymax, yt.back().v);
      if (y_limits_) y0 = ymin, y1 = ymax;
    }

    // ---- layout ----
    size_t longest = 0;
    for (const auto& s : series_) longest = std::max(longest, s.name.size());
    const double legend_w =
        series_.empty() ? 20 : std::min(280.0, 44.0 + 6.8 * double(longest)) + 16;
    const double left = 84, right = width_ - legend_w, top = title_.empty() ? 24 : 48,
                 bottom = height_ - (x_label_.empty() ? 36 : 58);
    auto px = [&](double x) { return left + fraction(x, xmin, xmax) * (right - left); };
    // Points far outside a fixed range are pulled in to 1e5 px: the visible part of the line
    // is the same, and the coordinates stay sane for renderers.
    auto py = [&](double y) {
      return std::clamp(bottom - fraction(y, y0, y1) * (bottom - top), -1e5, 1e5);
    };

    std::string o;
    o += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
    o += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(width_) +
         "\" height=\"" + std::to_string(height_) + "\" viewBox=\"0 0 " + std::to_string(width_) +
         " " + std::to_string(height_) +
         "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\">\n";
    o += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    o += "<defs><clipPath id=\"plot-area\"><rect x=\"" + num(left) + "\" y=\"" + num(top - 2) +
         "\" width=\"" + num(right - left) + "\" height=\"" + num(bottom - top + 4) +
         "\"/></clipPath></defs>\n";
    if (!title_.empty())
      o += "<text class=\"title\" x=\"" + num((left + right) / 2) +
           "\" y=\"28\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">" +
           escape(title_) + "</text>\n";

    // grid and ticks
    o += "<g class=\"y-axis\" stroke-width=\"1\">\n";
    for (const auto& t : yt) {
      if (t.v < y0 - 1e-9 || t.v > y1 + 1e-9) continue;
      const std::string y = num(py(t.v));
      o += "<line x1=\"" + num(left) + "\" x2=\"" + num(right) + "\" y1=\"" + y + "\" y2=\"" + y +
           "\" stroke=\"" + (t.major ? "#dddddd" : "#f0f0f0") + "\"/>\n";
      o += "<line x1=\"" + num(left - (t.major ? 6 : 3)) + "\" x2=\"" + num(left) + "\" y1=\"" + y +
           "\" y2=\"" + y + "\" stroke=\"#333333\"/>\n";
      if (!t.label.empty())
        o += "<text x=\"" + num(left - 9) + "\" y=\"" + y +
             "\" text-anchor=\"end\" dominant-baseline=\"middle\">" + escape(t.label) + "</text>\n";
    }
    o += "</g>\n<g class=\"x-axis\" stroke-width=\"1\">\n";
    for (const auto& t : xt) {
      if (t.v < xmin - 1e-9 * (xmax - xmin) || t.v > xmax + 1e-9 * (xmax - xmin)) continue;
      const std::string x = num(px(t.v));
      o += "<line x1=\"" + x + "\" x2=\"" + x + "\" y1=\"" + num(top) + "\" y2=\"" + num(bottom) +
           "\" stroke=\"#f0f0f0\"/>\n";
      o += "<line x1=\"" + x + "\" x2=\"" + x + "\" y1=\"" + num(bottom) + "\" y2=\"" +
           num(bottom + 6) + "\" stroke=\"#333333\"/>\n";
      o += "<text x=\"" + x + "\" y=\"" + num(bottom + 20) + "\" text-anchor=\"middle\">" +
           escape(t.label) + "</text>\n";
    }
    o += "</g>\n";
    // axes
    o += "<rect x=\"" + num(left) + "\" y=\"" + num(top) + "\" width=\"" + num(right - left) +
         "\" height=\"" + num(bottom - top) + "\" fill=\"none\" stroke=\"#333333\"/>\n";
    if (!x_label_.empty())
      o += "<text class=\"x-label\" x=\"" + num((left + right) / 2) + "\" y=\"" +
           num(height_ - 14) + "\" text-anchor=\"middle\" font-size=\"13\">" + escape(x_label_) +
           "</text>\n";
    if (!y_label_.empty()) {
      const std::string cy = num((top + bottom) / 2);
      o += "<text class=\"y-label\" x=\"20\" y=\"" + cy + "\" transform=\"rotate(-90 20 " + cy +
           ")\" text-anchor=\"middle\" font-size=\"13\">" + escape(y_label_) + "</text>\n";
    }
    if (empty)
      o += "<text x=\"" + num((left + right) / 2) + "\" y=\"" + num((top + bottom) / 2) +
           "\" text-anchor=\"middle\" fill=\"#888888\">no data to plot</text>\n";

    // series
    o += "<g class=\"series\" clip-path=\"url(#plot-area)\" fill=\"none\" stroke-width=\"2\" "
         "stroke-linejoin=\"round\" stroke-linecap=\"round\">\n";
    for (size_t k = 0; k < series_.size(); ++k) {
      const auto& s = series_[k];
      const std::string style = "stroke=\"" + color(k) + "\"" + dash(k);
      std::string pts;
      size_t npts = 0, drawn = 0;
      auto flush = [&] {
        if (npts >= 2) o += "<polyline " + style + " points=\"" + pts + "\"/>\n";
        pts.clear();
        npts = 0;
      };
      for (size_t i = 0; i < s.x.size(); ++i) {
        if (!drawable(s.x[i], s.y[i])) {
          flush();
          continue;
        }
        const double y = log_y_ ? std::log10(s.y[i]) : s.y[i];
        pts += (npts ? " " : "") + num(px(s.x[i])) + "," + num(py(y));
        ++npts, ++drawn;
      }
      flush();
      if (drawn <= 60)  // markers, so short series and isolated points stay visible
        for (size_t i = 0; i < s.x.size(); ++i)
          if (drawable(s.x[i], s.y[i])) {
            const double y = log_y_ ? std::log10(s.y[i]) : s.y[i];
            o += "<circle cx=\"" + num(px(s.x[i])) + "\" cy=\"" + num(py(y)) + "\" r=\"2.8\" " +
                 "fill=\"" + color(k) + "\" stroke=\"none\"/>\n";
          }
    }
    o += "</g>\n";

    // legend
    if (!series_.empty()) {
      const double lx = right + 14, ly = top + 4;
      o += "<g class=\"legend\">\n";
      o += "<rect x=\"" + num(lx - 6) + "\" y=\"" + num(ly - 4) + "\" width=\"" +
           num(legend_w - 16) + "\" height=\"" + num(20.0 * double(series_.size()) + 6) +
           "\" fill=\"white\" stroke=\"#cccccc\"/>\n";
      for (size_t k = 0; k < series_.size(); ++k) {
        const double y = ly + 10 + 20.0 * double(k);
        o += "<line x1=\"" + num(lx) + "\" x2=\"" + num(lx + 24) + "\" y1=\"" + num(y) +
             "\" y2=\"" + num(y) + "\" stroke=\"" + color(k) + "\" stroke-width=\"2.5\"" + dash(k) +
             "/>\n";
        o += "<text x=\"" + num(lx + 30) + "\" y=\"" + num(y) + "\" dominant-baseline=\"middle\">" +
             escape(truncate(series_[k].name, 38)) + "</text>\n";
      }
      o += "</g>\n";
    }
    o += "</svg>\n";
    return o;
  }

 private:
  struct Series {
    std::string name;
    std::vector<double> x, y;
  };
  struct Tick {
    double v;
    std::string label;
    bool major;
  };

  bool drawable(double x, double y) const {
    return std::isfinite(x) && std::isfinite(y) && (!log_y_ || y > 0);
  }

  // Where v lies in [lo, hi] (0 at lo, 1 at hi), lo < hi finite. A range wider than the largest
  // double (-1e308 to 1e308) is halved first, so its width is not infinite.
  static double fraction(double v, double lo, double hi) {
    if (std::isfinite(hi - lo)) return (v - lo) / (hi - lo);
    return (v / 2 - lo / 2) / (hi / 2 - lo / 2);
  }

  // An empty range [v, v] made 10 % of |v| (at least 1) wider each side, within the doubles.
  static void widen(double& lo, double& hi) {
    const double d = std::max(1.0, std::abs(lo) * 0.1), big = std::numeric_limits<double>::max();
    lo = std::max(-big, lo - d), hi = std::min(big, hi + d);
  }

  // About `target` ticks at 1, 2 or 5 times a power of ten; with extend, also the nice values
  // just outside [lo, hi] so the axis ends on a tick.
  static std::vector<Tick> linear_ticks(double lo, double hi, int target, bool extend) {
    const double raw = (hi - lo) / target;
    const double mag = std::pow(10.0, std::floor(std::log10(raw)));
    const double r = raw / mag;
    const double step = (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10) * mag;
    if (!(step > 0) || !std::isfinite(step) || !std::isfinite(lo / step) ||
        !std::isfinite(hi / step)) {  // a range too wide or too narrow for nice steps
      char a[32], b[32];
      std::snprintf(a, sizeof a, "%.3g", lo);
      std::snprintf(b, sizeof b, "%.3g", hi);
      return {{lo, a, true}, {hi, b, true}};
    }
    const int decimals = std::max(0, -static_cast<int>(std::floor(std::log10(step) + 1e-9)));
    double first = std::ceil(lo / step - 1e-9) * step, last = std::floor(hi / step + 1e-9) * step;
    if (extend) {  // not past the largest double (a range ending at 1.7e308)
      const double below = std::floor(lo / step + 1e-9) * step;
      const double above = std::ceil(hi / step - 1e-9) * step;
      if (std::isfinite(below)) first = below;
      if (std::isfinite(above)) last = above;
    }
    std::vector<Tick> ticks;
    for (double v = first; v <= last + step * 1e-6 && ticks.size() < 50; v += step) {
      const double t = std::abs(v) < step * 1e-9 ? 0.0 : v;  // no "-0"
      char buf[48];
      if (std::abs(t) >= 1e6 || (t != 0 && std::abs(t) < 1e-4))
        std::snprintf(buf, sizeof buf, "%.3g", t);
      else
        std::snprintf(buf, sizeof buf, "%.*f", decimals, t);
      ticks.push_back({t, buf, true});
    }
    return ticks;
  }

  static std::string num(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", v);
    return buf;
  }
  // Tableau 10; series beyond ten reuse the colours with dashes.
  static std::string color(size_t k) {
    static const char* palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
    return palette[k % 10];
  }
  static std::string dash(size_t k) {
    switch ((k / 10) % 3) {
      case 1:
        return " stroke-dasharray=\"7 4\"";
      case 2:
        return " stroke-dasharray=\"2 3\"";
      default:
        return "";
    }
  }
  static std::string truncate(const std::string& s, size_t n) {
    if (s.size() <= n) return s;
    size_t cut = n - 1;  // do not split a UTF-8 sequence
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
    return s.substr(0, cut) + "...";
  }
  // Text for XML: the five special characters escaped; control characters (not allowed in
  // XML 1.0) dropped.
  static std::string escape(std::string_view s) {
    std::string out;
    for (char ch : s) {
      switch (ch) {
        case '&':
          out += "&amp;";
          break;
        case '<':
          out += "&lt;";
          break;
        case '>':
          out += "&gt;";
          break;
        case '"':
          out += "&quot;";
          break;
        case '\'':
          out += "&apos;";
          break;
        default:
          if (static_cast<unsigned char>(ch) >= 0x20 || ch == '\t' || ch == '\n') out += ch;
      }
    }
    return out;
  }

  std::string title_, x_label_, y_label_;
  bool log_y_ = false;
  std::optional<std::pair<double, double>> y_limits_;
  int width_ = 900, height_ = 600;
  std::vector<Series> series_;
};

}  // namespace tapegrad::diag
