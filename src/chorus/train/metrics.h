// Metrics as JSON lines (one object per line, flushed as written) and a tiny JSON object
// builder for them. Torch-free.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace chorus::train {

// One flat JSON object, keys in insertion order. Doubles are written in the shortest form
// that reads back to the same value, integers exactly, non-finite doubles as null.
class JsonObject {
 public:
  JsonObject& add(const std::string& key, double v);
  JsonObject& add(const std::string& key, int64_t v);
  JsonObject& add(const std::string& key, int v) { return add(key, static_cast<int64_t>(v)); }
  JsonObject& add(const std::string& key, uint64_t v) { return add(key, static_cast<int64_t>(v)); }
  JsonObject& add(const std::string& key, bool v);
  JsonObject& add(const std::string& key, const std::string& v);
  JsonObject& add(const std::string& key, const char* v) { return add(key, std::string(v)); }
  std::string str() const;  // {"k": v, ...} on one line

 private:
  std::vector<std::pair<std::string, std::string>> fields_;  // key, encoded value
};

// JSON string escaping ("\"", "\\", control characters).
std::string jsonEscape(const std::string& s);

// Appends JSON lines to a file (created with its folders); each line is flushed.
class MetricsLog {
 public:
  MetricsLog() = default;
  explicit MetricsLog(const std::string& path, bool append = false);  // throws chorus::Error naming the path
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  bool isOpen() const { return f_ != nullptr; }
  const std::string& path() const { return path_; }
  // Writes o.str() and a newline, then flushes; throws chorus::Error naming the path if the
  // write fails. A default-constructed (closed) log ignores writes (ranks that log nothing).
  void write(const JsonObject& o);

 private:
  std::string path_;
  FILE* f_ = nullptr;
};

}  // namespace chorus::train
