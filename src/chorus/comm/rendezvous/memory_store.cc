#include "chorus/comm/rendezvous/memory_store.h"

#include <cstring>

#include "chorus/common/error.h"

namespace chorus::comm {

void MemoryStore::set(const std::string& key, const Bytes& value) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    data_[key] = value;
  }
  cv_.notify_all();
}

Bytes MemoryStore::get(const std::string& key, Millis timeout) {
  wait({key}, timeout);
  std::lock_guard<std::mutex> lock(mu_);
  return data_.at(key);
}

int64_t MemoryStore::add(const std::string& key, int64_t delta) {
  int64_t value = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Bytes& b = data_[key];
    if (b.size() == sizeof(int64_t)) std::memcpy(&value, b.data(), sizeof value);
    value += delta;
    b.resize(sizeof value);
    std::memcpy(b.data(), &value, sizeof value);
  }
  cv_.notify_all();
  return value;
}

void MemoryStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  auto ready = [&] {
    for (const auto& k : keys) {
      if (data_.find(k) == data_.end()) return false;
    }
    return true;
  };
  if (!cv_.wait_for(lock, timeout, ready)) {
    std::string missing;
    for (const auto& k : keys) {
      if (data_.find(k) == data_.end()) missing += (missing.empty() ? "" : ", ") + k;
    }
    throw TimeoutError(str("store: waited ", timeout.count(), " ms for key(s) ", missing,
                           " that no rank set; a rank may have failed to start"));
  }
}

bool MemoryStore::check(const std::vector<std::string>& keys) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& k : keys) {
    if (data_.find(k) == data_.end()) return false;
  }
  return true;
}

bool MemoryStore::erase(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  return data_.erase(key) > 0;
}

}  // namespace chorus::comm
