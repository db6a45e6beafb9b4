#pragma once
// A small strict JSON reader (RFC 8259) for file headers, with no dependency. It accepts exactly
// JSON: no comments, no trailing commas, no NaN, no leading zeros, no control characters or
// invalid UTF-8 in strings, no lone surrogates, no duplicate keys in an object. Nesting is
// limited (64 levels) so hostile input cannot exhaust the stack. Every failure is an IOError
// "<file>: JSON syntax error at byte <offset>: <what>", the offset counted in the whole file.
//
// Numbers are kept as their text; as_u64() reads a non-negative integer without fraction or
// exponent, which is all the safetensors header needs.

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "tapegrad/error.hpp"

namespace tapegrad::io {

struct JsonMember;

struct JsonValue {
  enum class Kind { Null, Bool, Number, String, Array, Object };
  Kind kind = Kind::Null;
  bool boolean = false;
  std::string text;  // a string's decoded UTF-8, or a number's literal text
  std::vector<JsonValue> items;
  std::vector<JsonMember> members;  // an object's members, in document order
  size_t offset = 0;                // byte offset of the value's first character in the file

  bool is_object() const { return kind == Kind::Object; }
  bool is_array() const { return kind == Kind::Array; }
  bool is_string() const { return kind == Kind::String; }
  bool is_number() const { return kind == Kind::Number; }

  // The number as a uint64_t, if it is a non-negative integer literal that fits; else false.
  bool as_u64(uint64_t& out) const {
    if (kind != Kind::Number || text.empty()) return false;
    uint64_t v = 0;
    for (char c : text) {
      if (c < '0' || c > '9') return false;  // sign, fraction or exponent
      const uint64_t d = static_cast<uint64_t>(c - '0');
      if (v > (UINT64_MAX - d) / 10) return false;
      v = v * 10 + d;
    }
    out = v;
    return true;
  }

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
};

struct JsonMember {
  std::string key;
  JsonValue value;
};

class JsonParser {
 public:
  static constexpr int max_depth = 64;

  // Parses text as one JSON value followed only by whitespace. base is the file offset of
  // text[0] (for messages); name is the file name.
  static JsonValue parse(std::string_view text, size_t base, const std::string& name) {
    JsonParser p(text, base, name);
    p.skip_ws();
    JsonValue v = p.value(0);
    p.skip_ws();
    if (p.pos_ != text.size()) p.fail("unexpected ", p.describe(), " after the JSON value");
    return v;
  }

 private:
  JsonParser(std::string_view t, size_t base, const std::string& name)
      : t_(t), base_(base), name_(name) {}

  template <class... Parts>
  [[noreturn]] void fail(Parts&&... parts) const {
    tapegrad::detail::fail<IOError>(name_, ": JSON syntax error at byte ", base_ + pos_, ": ",
                                    std::forward<Parts>(parts)...);
  }
  // What is at the current position, for messages.
  std::string describe() const {
    if (pos_ >= t_.size()) return "end of the header";
    const auto c = static_cast<unsigned char>(t_[pos_]);
    if (c >= 0x21 && c < 0x7f) return std::string("'") + static_cast<char>(c) + "'";
    char hex[16];
    std::snprintf(hex, sizeof hex, "byte 0x%02x", c);
    return hex;
  }

  void skip_ws() {
    while (pos_ < t_.size() &&
           (t_[pos_] == ' ' || t_[pos_] == '\t' || t_[pos_] == '\n' || t_[pos_] == '\r'))
      ++pos_;
  }
  bool at(char c) const { return pos_ < t_.size() && t_[pos_] == c; }
  void expect(char c, const char* context) {
    if (!at(c)) fail("expected '", c, "' ", context, ", found ", describe());
    ++pos_;
  }

  JsonValue value(int depth) {
    if (depth >= max_depth) fail("nesting deeper than ", max_depth, " levels");
    if (pos_ >= t_.size()) fail("expected a value, found end of the header");
    JsonValue v;
    v.offset = base_ + pos_;
    switch (t_[pos_]) {
      case '{':
        object(v, depth);
        break;
      case '[':
        array(v, depth);
        break;
      case '"':
        v.kind = JsonValue::Kind::String;
        v.text = string();
        break;
      case 't':
        literal("true", v, JsonValue::Kind::Bool, true);
        break;
      case 'f':
        literal("false", v, JsonValue::Kind::Bool, false);
        break;
      case 'n':
        literal("null", v, JsonValue::Kind::Null, false);
        break;
      default:
        if (t_[pos_] == '-' || (t_[pos_] >= '0' && t_[pos_] <= '9')) {
          v.kind = JsonValue::Kind::Number;
          v.text = number();
        } else {
          fail("expected a value, found ", describe());
        }
    }
    return v;
  }

  void literal(std::string_view word, JsonValue& v, JsonValue::Kind kind, bool b) {
    if (t_.substr(pos_, word.size()) != word) fail("invalid literal, expected ", word);
    pos_ += word.size();
    v.kind = kind;
    v.boolean = b;
  }

  void object(JsonValue& v, int depth) {
    v.kind = JsonValue::Kind::Object;
    ++pos_;  // '{'
    skip_ws();
    if (at('}')) {
      ++pos_;
      return;
    }
    std::unordered_set<std::string> keys;
    for (;;) {
      skip_ws();
      if (!at('"')) fail("expected a string key, found ", describe());
      const size_t key_pos = pos_;
      std::string key = string();
      if (!keys.insert(key).second) {
        pos_ = key_pos;
        fail("duplicate key \"", key, "\"");
      }
      skip_ws();
      expect(':', "after an object key");
      skip_ws();
      JsonValue item = value(depth + 1);
      v.members.push_back({std::move(key), std::move(item)});
      skip_ws();
      if (at(',')) {
        ++pos_;
        continue;
      }
      expect('}', "or ',' in an object");
      return;
    }
  }

  void array(JsonValue& v, int depth) {
    v.kind = JsonValue::Kind::Array;
    ++pos_;  // '['
    skip_ws();
    if (at(']')) {
      ++pos_;
      return;
    }
    for (;;) {
      skip_ws();
      v.items.push_back(value(depth + 1));
      skip_ws();
      if (at(',')) {
        ++pos_;
        continue;
      }
      expect(']', "or ',' in an array");
      return;
    }
  }

  std::string number() {
    const size_t start = pos_;
    if (at('-')) ++pos_;
    if (at('0')) {
      ++pos_;
    } else if (pos_ < t_.size() && t_[pos_] >= '1' && t_[pos_] <= '9') {
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
    return std::string(t_.substr(start, pos_ - start));
  }
  bool digits() {
    const size_t start = pos_;
    while (pos_ < t_.size() && t_[pos_] >= '0' && t_[pos_] <= '9') ++pos_;
    return pos_ > start;
  }

  unsigned hex4() {
    if (pos_ + 4 > t_.size()) fail("truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = t_[pos_];
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
      return pos_ + i < t_.size() ? static_cast<unsigned char>(t_[pos_ + i]) : 0u;
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

  std::string string() {
    ++pos_;  // opening quote
    std::string s;
    for (;;) {
      if (pos_ >= t_.size()) fail("unterminated string");
      const auto c = static_cast<unsigned char>(t_[pos_]);
      if (c == '"') {
        ++pos_;
        return s;
      }
      if (c < 0x20) fail("control character ", describe(), " in a string");
      if (c >= 0x80) {
        const size_t n = utf8_length();
        if (n == 0) fail("invalid UTF-8 (", describe(), ") in a string");
        s.append(t_.substr(pos_, n));
        pos_ += n;
        continue;
      }
      if (c != '\\') {
        s += static_cast<char>(c);
        ++pos_;
        continue;
      }
      ++pos_;
      if (pos_ >= t_.size()) fail("unterminated escape");
      const char e = t_[pos_++];
      switch (e) {
        case '"':
          s += '"';
          break;
        case '\\':
          s += '\\';
          break;
        case '/':
          s += '/';
          break;
        case 'b':
          s += '\b';
          break;
        case 'f':
          s += '\f';
          break;
        case 'n':
          s += '\n';
          break;
        case 'r':
          s += '\r';
          break;
        case 't':
          s += '\t';
          break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) fail("lone low surrogate in a \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (t_.substr(pos_, 2) != "\\u") fail("high surrogate without a low surrogate");
            pos_ += 2;
            const unsigned lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("high surrogate without a low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          append_utf8(s, cp);
          break;
        }
        default:
          --pos_;
          fail("invalid escape \\", describe());
      }
    }
  }

  std::string_view t_;
  size_t base_;
  const std::string& name_;
  size_t pos_ = 0;
};

// Appends s to out as a JSON string literal (quotes, backslashes and control characters
// escaped; other UTF-8 kept as is).
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

// True when s is well-formed UTF-8 (what a JSON string may hold).
inline bool is_valid_utf8(std::string_view s) {
  try {
    std::string quoted;
    json_append_string(quoted, s);
    JsonParser::parse(quoted, 0, "");
    return true;
  } catch (const IOError&) {
    return false;
  }
}

}  // namespace tapegrad::io
