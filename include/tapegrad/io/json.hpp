#pragma once
/// \file
/// JsonReader: a small strict JSON reader (RFC 8259) for file headers, with no dependency. It is
/// a pull parser: the caller walks the document it expects (begin_object, next_member, string,
/// number, ...) and keeps only what it needs, so memory follows the caller's result, never the
/// size of the text; a value of the wrong kind is reported where it starts, without reading
/// further. It accepts exactly JSON: no comments, no trailing commas, no NaN, no leading zeros,
/// no control characters or invalid UTF-8 in strings, no lone surrogates. Nesting is limited
/// (64 levels). Duplicate keys are for the caller to reject (it knows which keys it keeps).
/// Every failure is an IOError "<file>: JSON syntax error at byte <offset>: <what>", the offset
/// counted in the whole file.
///
///   JsonReader r(text, 8, path);
///   r.begin_object();
///   for (std::string key; r.next_member(key);)
///     if (r.peek() == JsonReader::Kind::String) use(key, r.string()); else r.skip_value();
///   r.end();

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <utility>

#include "tapegrad/error.hpp"

namespace tapegrad::io {

/// A small strict JSON pull parser (RFC 8259) for file headers (see the file's description). Every
/// failure is an IOError naming the file and byte offset.
class JsonReader {
 public:
  /// The kind of a JSON value.
  enum class Kind { Null, Bool, Number, String, Array, Object };
  /// The deepest nesting accepted.
  static constexpr int max_depth = 64;

  /// text: the JSON; base: the file offset of text[0] (for messages); name: the file name.
  JsonReader(std::string_view text, size_t base, std::string name)
      : t_(text), base_(base), name_(std::move(name)), available_(text.size()) {}

  /// For text still arriving (a file read in pieces): only text[0, available) is there yet, and
  /// before the reader looks at a byte beyond it, it calls fill(context, end), which must make
  /// text[0, end) valid (at least; end <= text.size()) and return how much now is. So a file is
  /// read only as far as the reader gets: a problem at byte 70 of a 94 MB header costs one piece.
  using Fill = size_t (*)(void* context, size_t end);
  /// Reads text as it arrives: see Fill.
  void set_source(Fill fill, void* context, size_t available) {
    fill_ = fill;
    context_ = context;
    available_ = available;
  }

  /// File offset of the next unread byte.
  size_t offset() const { return base_ + pos_; }

  /// The kind of the value starting at the next non-whitespace byte (fails where none can).
  Kind peek() {
    skip_ws();
    if (pos_ >= t_.size()) fail("expected a value, found end of the header");
    switch (ch(pos_)) {
      case '{':
        return Kind::Object;
      case '[':
        return Kind::Array;
      case '"':
        return Kind::String;
      case 't':
      case 'f':
        return Kind::Bool;
      case 'n':
        return Kind::Null;
      default:
        if (ch(pos_) == '-' || (ch(pos_) >= '0' && ch(pos_) <= '9')) return Kind::Number;
        fail("expected a value, found ", describe());
    }
  }
  /// The kind's name, for messages.
  static const char* kind_name(Kind k) {
    switch (k) {
      case Kind::Null:
        return "null";
      case Kind::Bool:
        return "a boolean";
      case Kind::Number:
        return "a number";
      case Kind::String:
        return "a string";
      case Kind::Array:
        return "an array";
      case Kind::Object:
        return "an object";
    }
    return "?";
  }

  // ---- containers ----
  /// begin_* consumes the opening bracket. next_member / next_item return true while another
  /// element follows (next_member has read its key and the ':'), false once they have consumed
  /// the closing bracket.
  void begin_object() { open('{', "an object"); }
  /// Next key of an object (see begin_object).
  bool next_member(std::string& key) {
    if (!next('}', "in an object")) return false;
    skip_ws();
    if (!at('"')) fail("expected a string key, found ", describe());
    key_offset_ = offset();
    key = string();
    skip_ws();
    expect(':', "after an object key");
    return true;
  }
  /// File offset of the key next_member read last.
  size_t key_offset() const { return key_offset_; }
  /// Consumes '[' (IOError if the next value is not an array).
  void begin_array() { open('[', "an array"); }
  /// Whether another item follows (see begin_object).
  bool next_item() { return next(']', "in an array"); }

  // ---- scalars ----
  /// A string value, decoded to UTF-8.
  std::string string() {
    skip_ws();
    if (!at('"')) fail("expected a string, found ", describe());
    ++pos_;
    std::string s;
    for (;;) {
      if (pos_ >= t_.size()) fail("unterminated string");
      const auto c = static_cast<unsigned char>(ch(pos_));
      if (c == '"') {
        ++pos_;
        return s;
      }
      if (c < 0x20) fail("control character ", describe(), " in a string");
      if (c >= 0x80) {
        const size_t n = utf8_length();
        if (n == 0) fail("invalid UTF-8 (", describe(), ") in a string");
        s.append(t_.substr(pos_, n));  // utf8_length read these
        pos_ += n;
        continue;
      }
      ++pos_;
      if (c == '\\')
        escape(s);
      else
        s += static_cast<char>(c);
    }
  }
  /// A number's literal text, checked against JSON's grammar.
  std::string_view number() {
    skip_ws();
    const size_t start = pos_;
    if (at('-')) ++pos_;
    if (at('0')) {
      ++pos_;
    } else if (pos_ < t_.size() && ch(pos_) >= '1' && ch(pos_) <= '9') {
      digits();
    } else {
      fail("expected a digit in a number, found ", describe());
    }
    if (at('.')) {
      ++pos_;
      if (!digits()) fail("expected a digit after '.', found ", describe());
    }
    if (at('e') || at('E')) {
      ++pos_;
      if (at('+') || at('-')) ++pos_;
      if (!digits()) fail("expected a digit in an exponent, found ", describe());
    }
    return t_.substr(start, pos_ - start);
  }
  /// A number literal as a uint64_t, if it is a non-negative integer (no sign, fraction or
  /// exponent) that fits; else false.
  static bool to_u64(std::string_view literal, uint64_t& out) {
    if (literal.empty()) return false;
    uint64_t v = 0;
    for (char c : literal) {
      if (c < '0' || c > '9') return false;
      const auto d = static_cast<uint64_t>(c - '0');
      if (v > (UINT64_MAX - d) / 10) return false;
      v = v * 10 + d;
    }
    out = v;
    return true;
  }
  /// true, false or null; returns the boolean (false for null).
  bool literal() {
    skip_ws();
    need(pos_ + 5);
    for (std::string_view word : {"true", "false", "null"})
      if (t_.substr(pos_, word.size()) == word) {
        pos_ += word.size();
        return word == "true";
      }
    fail("invalid literal, expected true, false or null");
  }
  /// Reads and checks one whole value of any kind, keeping nothing.
  void skip_value() {
    switch (peek()) {
      case Kind::Object: {
        begin_object();
        for (std::string key; next_member(key);) skip_value();
        return;
      }
      case Kind::Array:
        begin_array();
        while (next_item()) skip_value();
        return;
      case Kind::String:
        string();
        return;
      case Kind::Number:
        number();
        return;
      default:
        literal();
    }
  }

  /// Only whitespace may follow the document.
  void end() {
    skip_ws();
    if (pos_ != t_.size()) fail("unexpected ", describe(), " after the JSON value");
  }

  /// Throws IOError "<file>: JSON syntax error at byte <offset>: <parts...>".
  template <class... Parts>
  [[noreturn]] void fail(Parts&&... parts) const {
    tapegrad::detail::fail<IOError>(name_, ": JSON syntax error at byte ", base_ + pos_, ": ",
                                    std::forward<Parts>(parts)...);
  }

 private:
  // Makes text[0, end) readable (end clamped to the text).
  void need(size_t end) const {
    if (end > available_ && available_ < t_.size())
      available_ = fill_(context_, std::min(end, t_.size()));
  }
  char ch(size_t i) const {
    need(i + 1);
    return t_[i];
  }

  void skip_ws() {
    for (; pos_ < t_.size(); ++pos_) {
      const char c = ch(pos_);
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return;
    }
  }
  bool at(char c) const { return pos_ < t_.size() && ch(pos_) == c; }
  void expect(char c, const char* context) {
    if (!at(c)) fail("expected '", c, "' ", context, ", found ", describe());
    ++pos_;
  }
  // What is at the current position, for messages.
  std::string describe() const {
    if (pos_ >= t_.size()) return "end of the header";
    const auto c = static_cast<unsigned char>(ch(pos_));
    if (c >= 0x21 && c < 0x7f) return std::string("'") + static_cast<char>(c) + "'";
    char hex[16];
    std::snprintf(hex, sizeof hex, "byte 0x%02x", c);
    return hex;
  }

  // One bit per open container: set while it has had no element yet.
  void open(char bracket, const char* what) {
    skip_ws();
    if (!at(bracket)) fail("expected ", what, ", found ", describe());
    if (depth_ >= max_depth) fail("nesting deeper than ", max_depth, " levels");
    ++pos_;
    first_ |= uint64_t{1} << depth_++;
  }
  bool next(char close, const char* context) {
    skip_ws();
    const uint64_t bit = uint64_t{1} << (depth_ - 1);
    if (first_ & bit) {
      first_ &= ~bit;
      if (!at(close)) return true;
    } else if (at(',')) {
      ++pos_;
      return true;
    } else if (!at(close)) {
      fail("expected '", close, "' or ',' ", context, ", found ", describe());
    }
    ++pos_;
    --depth_;
    return false;
  }

  bool digits() {
    const size_t start = pos_;
    while (pos_ < t_.size() && ch(pos_) >= '0' && ch(pos_) <= '9') ++pos_;
    return pos_ > start;
  }

  // After a backslash.
  void escape(std::string& s) {
    if (pos_ >= t_.size()) fail("unterminated escape");
    const char e = ch(pos_++);
    switch (e) {
      case '"':
      case '\\':
      case '/':
        s += e;
        return;
      case 'b':
        s += '\b';
        return;
      case 'f':
        s += '\f';
        return;
      case 'n':
        s += '\n';
        return;
      case 'r':
        s += '\r';
        return;
      case 't':
        s += '\t';
        return;
      case 'u': {
        unsigned cp = hex4();
        if (cp >= 0xDC00 && cp <= 0xDFFF) fail("lone low surrogate in a \\u escape");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          need(pos_ + 2);
          if (t_.substr(pos_, 2) != "\\u") fail("high surrogate without a low surrogate");
          pos_ += 2;
          const unsigned lo = hex4();
          if (lo < 0xDC00 || lo > 0xDFFF) fail("high surrogate without a low surrogate");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        append_utf8(s, cp);
        return;
      }
      default:
        --pos_;
        fail("invalid escape \\", describe());
    }
  }
  unsigned hex4() {
    if (pos_ + 4 > t_.size()) fail("truncated \\u escape");
    need(pos_ + 4);
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = ch(pos_);
      unsigned d;
      if (c >= '0' && c <= '9')
        d = static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f')
        d = static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        d = static_cast<unsigned>(c - 'A' + 10);
      else
        fail("invalid hex digit in a \\u escape: ", describe());
      v = v * 16 + d;
      ++pos_;
    }
    return v;
  }
  static void append_utf8(std::string& s, unsigned cp) {
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else if (cp < 0x800) {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s += static_cast<char>(0xE0 | (cp >> 12));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      s += static_cast<char>(0xF0 | (cp >> 18));
      s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  // Length of the valid UTF-8 sequence starting at pos_ (lead byte >= 0x80), or 0.
  size_t utf8_length() const {
    auto b = [&](size_t i) {
      return pos_ + i < t_.size() ? static_cast<unsigned char>(ch(pos_ + i)) : 0u;
    };
    const unsigned c0 = b(0);
    auto cont = [&](size_t i) { return (b(i) & 0xC0) == 0x80; };
    if (c0 >= 0xC2 && c0 <= 0xDF) return cont(1) ? 2 : 0;
    if (c0 >= 0xE0 && c0 <= 0xEF) {
      if (!cont(1) || !cont(2)) return 0;
      if (c0 == 0xE0 && b(1) < 0xA0) return 0;   // overlong
      if (c0 == 0xED && b(1) >= 0xA0) return 0;  // UTF-16 surrogate
      return 3;
    }
    if (c0 >= 0xF0 && c0 <= 0xF4) {
      if (!cont(1) || !cont(2) || !cont(3)) return 0;
      if (c0 == 0xF0 && b(1) < 0x90) return 0;   // overlong
      if (c0 == 0xF4 && b(1) >= 0x90) return 0;  // above U+10FFFF
      return 4;
    }
    return 0;
  }

  std::string_view t_;
  size_t base_;
  std::string name_;
  size_t pos_ = 0;
  mutable size_t available_;
  Fill fill_ = nullptr;
  void* context_ = nullptr;
  int depth_ = 0;
  uint64_t first_ = 0;
  size_t key_offset_ = 0;
};

/// Appends s to out as a JSON string literal (quotes, backslashes and control characters
/// escaped; other UTF-8 kept as is).
inline void json_append_string(std::string& out, std::string_view s) {
  out += '"';
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"')
      out += "\\\"";
    else if (c == '\\')
      out += "\\\\";
    else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  out += '"';
}

/// True when s is well-formed UTF-8 (what a JSON string may hold).
inline bool is_valid_utf8(std::string_view s) {
  try {
    std::string quoted;
    json_append_string(quoted, s);
    JsonReader r(quoted, 0, "");
    r.string();
    return true;
  } catch (const IOError&) {
    return false;
  }
}

}  // namespace tapegrad::io
