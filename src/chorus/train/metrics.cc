// JSON-lines metrics: the flat object encoder (numbers that read back exactly, escaped
// strings) and the flushed, append-or-truncate log file the trainer writes to.
#include "chorus/train/metrics.h"

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "chorus/common/error.h"

namespace chorus::train {

namespace {

// The shortest decimal that parses back to the same double (std::to_chars without a
// precision guarantees that); always valid JSON, e.g. "0.1", "1e-07", "3".
std::string encodeDouble(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  if (ec != std::errc()) return "null";  // cannot happen with 64 bytes; keep the line valid anyway
  return std::string(buf, end);
}

}  // namespace

std::string jsonEscape(const std::string& s) {
  std::string out;
  out.reserve(s.size() + 2);
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          static const char kHex[] = "0123456789abcdef";
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xf];
        } else {
          out += ch;  // UTF-8 bytes pass through unchanged
        }
    }
  }
  return out;
}

JsonObject& JsonObject::add(const std::string& key, double v) {
  fields_.emplace_back(key, encodeDouble(v));
  return *this;
}

JsonObject& JsonObject::add(const std::string& key, int64_t v) {
  fields_.emplace_back(key, std::to_string(v));
  return *this;
}

JsonObject& JsonObject::add(const std::string& key, bool v) {
  fields_.emplace_back(key, v ? "true" : "false");
  return *this;
}

JsonObject& JsonObject::add(const std::string& key, const std::string& v) {
  fields_.emplace_back(key, "\"" + jsonEscape(v) + "\"");
  return *this;
}

std::string JsonObject::str() const {
  std::string out = "{";
  for (size_t i = 0; i < fields_.size(); ++i) {
    if (i > 0) out += ", ";
    out += "\"";
    out += jsonEscape(fields_[i].first);
    out += "\": ";
    out += fields_[i].second;
  }
  out += "}";
  return out;
}

MetricsLog::MetricsLog(const std::string& path, bool append) : path_(path) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) {
      throw Error(str("metrics log ", path, ": cannot create the folder ", parent.string(), ": ", ec.message(),
                      "; choose an output.dir you can write to"));
    }
  }
  f_ = std::fopen(path.c_str(), append ? "a" : "w");
  if (f_ == nullptr) {
    int err = errno;
    throw Error(str("metrics log ", path, ": cannot open for ", append ? "appending" : "writing", ": ",
                    std::strerror(err), "; choose an output.dir you can write to"));
  }
}

MetricsLog::~MetricsLog() {
  if (f_ != nullptr) std::fclose(f_);
}

void MetricsLog::write(const JsonObject& o) {
  if (f_ == nullptr) return;
  std::string line = o.str();
  line += '\n';
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0) {
    int err = errno;
    throw Error(str("metrics log ", path_, ": write failed: ", std::strerror(err), "; is the disk full?"));
  }
}

}  // namespace chorus::train
