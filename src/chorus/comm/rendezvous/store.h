// The rendezvous key-value store: how ranks find each other. One process hosts a
// TcpStoreServer (the launcher, or rank 0 under torchrun/mpirun/srun conventions); every rank
// holds a TcpStore client. Values are byte strings; add() keeps 64-bit counters.
//
// Every connection proves it holds the job secret with an HMAC-SHA256 challenge before any
// command is served; one that fails is logged and closed. Every call has a timeout.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "chorus/common/clock.h"

namespace chorus::comm {

using Bytes = std::vector<uint8_t>;

inline Bytes toBytes(const std::string& s) { return Bytes(s.begin(), s.end()); }
inline std::string toString(const Bytes& b) { return std::string(b.begin(), b.end()); }

// Thread-safe: every implementation may be called from several threads.
class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const Bytes& value) = 0;
  // Blocks until the key exists (or the timeout passes: TimeoutError naming the key).
  virtual Bytes get(const std::string& key, Millis timeout) = 0;
  // Atomically adds delta to the counter at key (created at 0) and returns the new value.
  virtual int64_t add(const std::string& key, int64_t delta) = 0;
  // Blocks until every key exists.
  virtual void wait(const std::vector<std::string>& keys, Millis timeout) = 0;
  // True if every key exists, without blocking.
  virtual bool check(const std::vector<std::string>& keys) = 0;
  // Removes a key; true if it existed.
  virtual bool erase(const std::string& key) = 0;
};

// Prepends `prefix/` to every key of an underlying store (not owned).
class PrefixStore : public Store {
 public:
  PrefixStore(std::string prefix, Store* base) : prefix_(std::move(prefix) + "/"), base_(base) {}
  void set(const std::string& key, const Bytes& value) override { base_->set(prefix_ + key, value); }
  Bytes get(const std::string& key, Millis timeout) override { return base_->get(prefix_ + key, timeout); }
  int64_t add(const std::string& key, int64_t delta) override { return base_->add(prefix_ + key, delta); }
  void wait(const std::vector<std::string>& keys, Millis timeout) override;
  bool check(const std::vector<std::string>& keys) override;
  bool erase(const std::string& key) override { return base_->erase(prefix_ + key); }

 private:
  std::string prefix_;
  Store* base_;
};

struct StoreServerOptions {
  // Address to bind. "" binds 127.0.0.1 unless anyInterface is set.
  std::string bindAddr = "127.0.0.1";
  bool anyInterface = false;  // bind 0.0.0.0 (asked for explicitly, never by default)
  int port = 0;               // 0: an ephemeral port, read back with port()
  std::string secret;
  // How long a new connection has to complete the secret handshake before it is refused and
  // closed. 0: CHORUS_TIMEOUT_MS, at most 10 s. Connections mid-handshake hold no thread (the
  // server runs every handshake in its poll loop), only a slot among at most 1024 pending.
  Millis handshakeTimeout{0};
};

// Serves the store protocol on a background thread until destroyed or stop()ped.
class TcpStoreServer {
 public:
  explicit TcpStoreServer(const StoreServerOptions& opts);
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

  int port() const;
  const std::string& address() const;
  // Number of connections refused for failing the secret challenge (for tests and logs).
  int refusedConnections() const;
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A client connection to a TcpStoreServer. Connecting retries until `timeout`, since the
// server may start after the clients.
class TcpStore : public Store {
 public:
  TcpStore(const std::string& host, int port, const std::string& secret, Millis timeout);
  ~TcpStore() override;

  void set(const std::string& key, const Bytes& value) override;
  Bytes get(const std::string& key, Millis timeout) override;
  int64_t add(const std::string& key, int64_t delta) override;
  void wait(const std::vector<std::string>& keys, Millis timeout) override;
  bool check(const std::vector<std::string>& keys) override;
  bool erase(const std::string& key) override;

  // The local address of this connection: the address peers can reach us at.
  std::string localAddress() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::comm
