#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "tapegrad/diag/svg_plot.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace diag = tapegrad::diag;
using tapegrad::testing::file_exists;
using tapegrad::testing::read_text_file;
using tapegrad::testing::tmp_path;

namespace {

size_t count_of(const std::string& s, const std::string& part) {
  size_t n = 0;
  for (size_t at = s.find(part); at != std::string::npos; at = s.find(part, at + 1)) ++n;
  return n;
}

// True when "nan" or "inf" appears as a number (not inside a word like "dominant-baseline").
bool has_non_finite_number(const std::string& s) {
  for (const std::string w : {"nan", "inf"})
    for (size_t at = s.find(w); at != std::string::npos; at = s.find(w, at + 1))
      if (at == 0 || !std::isalpha(static_cast<unsigned char>(s[at - 1]))) return true;
  return false;
}

// A small XML well-formedness check: balanced, properly nested tags, quoted attribute values,
// no raw '<' or stray '&' in text, one root element. Returns "" when well-formed.
std::string xml_problem(const std::string& x) {
  std::vector<std::string> stack;
  size_t i = 0;
  int roots = 0;
  auto check_text = [&](size_t from, size_t to) -> std::string {
    for (size_t k = from; k < to; ++k)
      if (x[k] == '&') {
        const size_t semi = x.find(';', k);
        if (semi == std::string::npos || semi > to) return "stray & at " + std::to_string(k);
        const std::string ent = x.substr(k, semi - k + 1);
        if (ent != "&amp;" && ent != "&lt;" && ent != "&gt;" && ent != "&quot;" && ent != "&apos;")
          return "unknown entity " + ent;
      }
    return "";
  };
  while (i < x.size()) {
    const size_t lt = x.find('<', i);
    const size_t text_end = lt == std::string::npos ? x.size() : lt;
    if (auto p = check_text(i, text_end); !p.empty()) return p;
    if (lt == std::string::npos) break;
    if (stack.empty() && x.find_first_not_of(" \n", i) < lt && roots > 0)
      return "text after the root element";
    if (x.compare(lt, 5, "<?xml") == 0) {
      const size_t e = x.find("?>", lt);
      if (e == std::string::npos) return "unterminated declaration";
      i = e + 2;
      continue;
    }
    const size_t gt = x.find('>', lt);
    if (gt == std::string::npos) return "unterminated tag at " + std::to_string(lt);
    std::string tag = x.substr(lt + 1, gt - lt - 1);
    if (tag.find('<') != std::string::npos) return "'<' inside a tag at " + std::to_string(lt);
    if (count_of(tag, "\"") % 2) return "unbalanced quotes in <" + tag + ">";
    if (!tag.empty() && tag[0] == '/') {
      const std::string name = tag.substr(1);
      if (stack.empty() || stack.back() != name) return "mismatched </" + name + ">";
      stack.pop_back();
    } else {
      const bool self = !tag.empty() && tag.back() == '/';
      const std::string name = tag.substr(0, tag.find_first_of(" /\n"));
      if (name.empty()) return "empty tag name at " + std::to_string(lt);
      // attribute values must be quoted: every '=' is followed by '"'
      for (size_t k = tag.find('='); k != std::string::npos; k = tag.find('=', k + 1)) {
        const size_t q1 = tag.rfind('"', k);
        const bool inside_value = q1 != std::string::npos && count_of(tag.substr(0, k), "\"") % 2;
        if (!inside_value && (k + 1 >= tag.size() || tag[k + 1] != '"'))
          return "unquoted attribute in <" + name + ">";
      }
      if (stack.empty()) ++roots;
      if (!self) stack.push_back(name);
    }
    i = gt + 1;
  }
  if (!stack.empty()) return "unclosed <" + stack.back() + ">";
  if (roots != 1) return std::to_string(roots) + " root elements";
  return "";
}

TEST(SvgPlot, TheCheckerItselfCatchesBrokenXml) {
  EXPECT_EQ(xml_problem("<a><b/></a>"), "");
  EXPECT_NE(xml_problem("<a><b></a>"), "");
  EXPECT_NE(xml_problem("<a>x & y</a>"), "");
  EXPECT_NE(xml_problem("<a x=1/>"), "");
  EXPECT_NE(xml_problem("<a/><b/>"), "");
}

TEST(SvgPlot, LogAxisHasDecadeTicksLegendAndSkipsUndrawableValues) {
  diag::LinePlot p;
  p.title("Gradient norm per layer").x_label("layer").y_label("norm").log_y();
  std::vector<double> a = {1e-12, 1e-9, 1e-6, 1e-3, 1};
  std::vector<double> b = {0.5, 0.0, -1.0, std::numeric_limits<double>::quiet_NaN(), 0.25};
  p.add("sigmoid <default> & co", a).add("ReLU, He", b);
  const std::string s = p.svg();
  EXPECT_EQ(xml_problem(s), "") << s;
  EXPECT_NE(s.find("<svg xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_NE(s.find(">Gradient norm per layer</text>"), std::string::npos);
  EXPECT_NE(s.find(">layer</text>"), std::string::npos);
  EXPECT_NE(s.find(">norm</text>"), std::string::npos);
  EXPECT_NE(s.find(">sigmoid &lt;default&gt; &amp; co</text>"), std::string::npos) << s;
  EXPECT_NE(s.find(">ReLU, He</text>"), std::string::npos);
  for (int e = -12; e <= 0; ++e)
    EXPECT_NE(s.find(">1e" + std::to_string(e) + "</text>"), std::string::npos) << "1e" << e;
  EXPECT_EQ(s.find(">1e1</text>"), std::string::npos);  // the axis ends at the top decade
  // Series a: one line of 5 points. Series b: 0, -1 and NaN are skipped, leaving two isolated
  // points: no line, but both markers.
  EXPECT_EQ(count_of(s, "<polyline "), 1u);
  EXPECT_EQ(count_of(s, "<circle "), 5u + 2u);
  // distinct colours for the two series, each used in its legend entry
  EXPECT_NE(s.find("stroke=\"#1f77b4\" points="), std::string::npos);
  EXPECT_GE(count_of(s, "#ff7f0e"), 3u);  // 2 markers + legend
}

TEST(SvgPlot, ManyDecadesAreThinnedToReadableLabels) {
  diag::LinePlot p;
  p.log_y().add("wide", {1e-30, 1e10});
  const std::string s = p.svg();
  // 40 decades, labels every 4th decade: 1e-28, ..., 1e8; 1e-29 gets a tick but no label.
  EXPECT_NE(s.find(">1e-28</text>"), std::string::npos);
  EXPECT_NE(s.find(">1e0</text>"), std::string::npos);
  EXPECT_EQ(s.find(">1e-29</text>"), std::string::npos);
  EXPECT_LE(count_of(s, "text-anchor=\"end\""), 12u);
}

TEST(SvgPlot, LinearAxisTicksAndLineBreaks) {
  diag::LinePlot p;
  std::vector<double> x, y;
  for (int i = 0; i <= 10; ++i)
    x.push_back(0.5 * i), y.push_back(i == 5 ? INFINITY : 2.0 - 0.1 * i);
  p.title("Training loss").x_label("epoch").add("loss", x, y);
  const std::string s = p.svg();
  EXPECT_EQ(xml_problem(s), "") << s;
  // x from 0 to 5 in steps of 0.5; y from 1 to 2 in steps of 0.2
  EXPECT_NE(s.find(">2.5</text>"), std::string::npos) << s;
  EXPECT_NE(s.find(">5.0</text>"), std::string::npos);
  EXPECT_NE(s.find(">1.2</text>"), std::string::npos);
  EXPECT_NE(s.find(">2.0</text>"), std::string::npos);
  EXPECT_EQ(count_of(s, "<polyline "), 2u);  // broken at the Inf
  EXPECT_FALSE(has_non_finite_number(s));
}

// Ranges as wide as the doubles (their width is infinite) or a single value near the largest
// double gave NaN coordinates: every line and point of the plot was lost.
TEST(SvgPlot, ValuesNearTheLargestDoubleGiveFiniteCoordinates) {
  const double big = std::numeric_limits<double>::max();
  diag::LinePlot wide;
  wide.add("y", {0.0, 1.0, 2.0}, {-1e308, 0.0, 1e308});
  std::string s = wide.svg();
  EXPECT_FALSE(has_non_finite_number(s)) << s;
  // bottom, middle and top of the frame (y from 564 to 24), left to right (x from 84 to 833.2)
  EXPECT_NE(s.find("points=\"84.00,564.00 458.60,294.00 833.20,24.00\""), std::string::npos) << s;
  EXPECT_NE(s.find(">1e+308</text>"), std::string::npos);

  const std::vector<std::pair<std::vector<double>, std::vector<double>>> cases = {
      {{-1e308, 1e308}, {0.0, 1.0}},
      {{-big, big}, {-big, big}},
      {{1e308, 1e308}, {1.0, 2.0}},
      {{0.0, 1.0}, {big, big}},
      {{0.0, 1.0}, {-big, -big}}};
  for (const auto& [x, y] : cases) {
    diag::LinePlot p;
    p.add("extreme", x, y);
    s = p.svg();
    EXPECT_EQ(xml_problem(s), "");
    EXPECT_FALSE(has_non_finite_number(s)) << x[0] << " " << x[1] << " " << y[0] << " " << y[1];
    EXPECT_EQ(count_of(s, "<polyline "), 1u);
  }
  diag::LinePlot limits;
  limits.y_limits(-1e308, 1e308).add("y", {0.0, 1.0});
  s = limits.svg();
  EXPECT_FALSE(has_non_finite_number(s)) << s;
  EXPECT_NE(s.find(",294.00 "), std::string::npos) << s;  // y = 0 halfway up the frame
}

TEST(SvgPlot, YLimitsFixTheRangeAndCutLinesThatLeaveIt) {
  diag::LinePlot p;
  p.y_limits(0, 3).add("ok", {2.3, 1.0, 0.5}).add("diverged", {2.3, 1e20, 1e22});
  const std::string s = p.svg();
  EXPECT_EQ(xml_problem(s), "") << s;
  // Ticks of [0, 3] only (0.0 ... 3.0 in steps of 0.5), nothing near 1e20.
  EXPECT_NE(s.find(">0.0</text>"), std::string::npos) << s;
  EXPECT_NE(s.find(">3.0</text>"), std::string::npos);
  EXPECT_EQ(s.find(">3.5</text>"), std::string::npos);
  EXPECT_EQ(s.find("e+"), std::string::npos);
  // Both series are drawn; the far-off points are pulled in to 1e5 px, inside the clip path.
  EXPECT_EQ(count_of(s, "<polyline "), 2u);
  EXPECT_NE(s.find(",-100000.00"), std::string::npos) << s;
  EXPECT_NE(s.find("clip-path=\"url(#plot-area)\""), std::string::npos);

  diag::LinePlot q;
  q.log_y().y_limits(1e-3, 1e2).add("a", {1e-10, 1.0});
  const std::string t = q.svg();
  EXPECT_NE(t.find(">1e-3</text>"), std::string::npos) << t;
  EXPECT_NE(t.find(">1e2</text>"), std::string::npos);
  EXPECT_EQ(t.find(">1e-10</text>"), std::string::npos);

  EXPECT_THROW(p.y_limits(1, 1), tg::ValueError);
  EXPECT_THROW(p.y_limits(0, INFINITY), tg::ValueError);
  diag::LinePlot r;
  r.log_y().y_limits(0, 1).add("a", {1.0, 2.0});
  EXPECT_THROW(r.svg(), tg::ValueError);
}

TEST(SvgPlot, TwelveSeriesGetDistinctStyles) {
  diag::LinePlot p;
  for (int k = 0; k < 12; ++k) p.add("s" + std::to_string(k), {1.0 * k, 2.0 * k});
  const std::string s = p.svg();
  EXPECT_EQ(xml_problem(s), "");
  std::set<std::string> styles;
  for (size_t at = s.find("<polyline "); at != std::string::npos; at = s.find("<polyline ", at + 1))
    styles.insert(s.substr(at, s.find(" points=", at) - at));
  EXPECT_EQ(styles.size(), 12u);
}

TEST(SvgPlot, EmptyPlotAndBadInput) {
  diag::LinePlot p;
  const std::string s = p.svg();
  EXPECT_EQ(xml_problem(s), "");
  EXPECT_NE(s.find("no data to plot"), std::string::npos);
  diag::LinePlot q;
  q.log_y().add("zeros", {0.0, 0.0});
  EXPECT_NE(q.svg().find("no data to plot"), std::string::npos);
  EXPECT_THROW(p.add("bad", {1.0, 2.0}, {1.0}), tg::ValueError);
  EXPECT_THROW(p.size(10, 10), tg::ValueError);
}

TEST(SvgPlot, SaveWritesTheFileAtomicallyAndItParsesAsXml) {
  const std::string path = tmp_path("tg_plot.svg");
  diag::LinePlot p;
  p.title("t").log_y().add("a", {1e-3, 1e-1, 1.0});
  p.save(path);
  EXPECT_EQ(read_text_file(path), p.svg());
  EXPECT_FALSE(file_exists(path + ".tmp"));
  // A real XML parser as a second opinion, when Python is on the machine.
  if (std::system("python3 -c 'import xml.dom.minidom' > /dev/null 2>&1") == 0) {
    const std::string cmd =
        "python3 -c 'import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])' " + path;
    EXPECT_EQ(std::system(cmd.c_str()), 0) << "python's XML parser rejected " << path;
  }
}

}  // namespace
