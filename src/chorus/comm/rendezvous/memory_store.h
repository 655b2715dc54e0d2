// An in-process Store for ranks that are threads of one process (tests, the simulator).
#pragma once

#include <condition_variable>
#include <map>
#include <mutex>

#include "chorus/comm/rendezvous/store.h"

namespace chorus::comm {

// Thread-safe; get() and wait() block on a condition variable until the key is set.
class MemoryStore : public Store {
 public:
  void set(const std::string& key, const Bytes& value) override;
  Bytes get(const std::string& key, Millis timeout) override;
  int64_t add(const std::string& key, int64_t delta) override;
  void wait(const std::vector<std::string>& keys, Millis timeout) override;
  bool check(const std::vector<std::string>& keys) override;
  bool erase(const std::string& key) override;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Bytes> data_;
};

}  // namespace chorus::comm
