// The TCP rendezvous store: a server on one background thread, and a thread-safe client.
//
// Server. One thread runs a poll() loop over the listening socket, a wake-up eventfd, the
// connections that have not yet proved the secret, and every authenticated client; there is
// no thread per client, and none per handshake. The loop runs the server's side of the
// handshake itself (net::ServerHandshake): it collects the client's greeting as it arrives,
// answers once the whole greeting is in, then collects the client's proof. Each step is a
// few microseconds of work, so a peer that connects and sends one byte, or nothing, or stalls
// halfway, ties up nothing but a slot in the poll set (at most kMaxPendingHandshakes of them)
// until its handshake deadline; everyone else is served meanwhile. A peer that fails or runs
// out of time is logged with its address, counted and closed; one that passes becomes a
// client. The loop reads frames (store_protocol.h) into a per-client buffer and serves them
// in order. A GET or WAIT whose keys are missing parks its client: the client is not read
// from again until a SET or ADD makes every key exist (then it gets the reply) or its
// timeout passes (then a timeout reply naming the missing keys).
// Replies go to a per-client output buffer flushed as the socket accepts them, so a slow
// reader never blocks the loop. A malformed frame gets an error reply and its connection is
// closed; the server keeps serving everyone else.
//
// Client. Requests are synchronous: encode, write, read one reply, each bounded by a
// deadline (a blocking GET/WAIT waits for its own timeout plus a grace period for the
// reply). Each request borrows an idle connection from a small pool, opening and
// authenticating a new one when all are busy, so one thread blocked in get() never stalls
// another thread's set(). A connection that fails is dropped; the error names the store's
// address and what to check.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>
#include <unordered_map>

#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/common/logging.h"
#include "chorus/comm/net/auth.h"
#include "chorus/comm/net/socket.h"
#include "chorus/comm/rendezvous/store.h"
#include "chorus/comm/rendezvous/store_protocol.h"

namespace chorus::comm {

void PrefixStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  std::vector<std::string> full;
  full.reserve(keys.size());
  for (const auto& k : keys) full.push_back(prefix_ + k);
  base_->wait(full, timeout);
}

bool PrefixStore::check(const std::vector<std::string>& keys) {
  std::vector<std::string> full;
  full.reserve(keys.size());
  for (const auto& k : keys) full.push_back(prefix_ + k);
  return base_->check(full);
}

namespace {

constexpr size_t kMaxPendingHandshakes = 1024;
constexpr size_t kReadChunk = 64 * 1024;
// Per turn of the loop, read at most this much from one client, so one busy client cannot
// starve the rest.
constexpr size_t kMaxReadPerTurn = 1 << 20;
// A client whose unsent replies exceed this is not read from until it drains them.
constexpr size_t kMaxPendingOutput = kMaxStoreBodyBytes;
// Longest timeout honoured (a "wait forever" from the caller is clamped to this).
constexpr uint64_t kMaxTimeoutMs = uint64_t{30} * 24 * 3600 * 1000;

std::string joinKeys(const std::vector<std::string>& keys) {
  std::string out;
  for (const auto& k : keys) out += (out.empty() ? "'" : ", '") + k + "'";
  return out;
}

uint64_t clampTimeout(Millis t) {
  if (t.count() <= 0) return 0;
  return std::min<uint64_t>(static_cast<uint64_t>(t.count()), kMaxTimeoutMs);
}

// A connection that has not yet proved the secret.
struct Unproven {
  net::Fd fd;
  std::string peer;
  Clock::time_point until;
  net::ServerHandshake handshake;
};

struct ServedClient {
  net::Fd fd;
  std::string peer;
  Bytes in;
  Bytes out;
  size_t outPos = 0;
  bool parked = false;
  StoreMessage parkedRequest;
  Clock::time_point parkedUntil;
  bool closeAfterFlush = false;
  bool eof = false;   // the peer closed its side; buffered requests are still served
  bool dead = false;  // the connection failed; drop it

  size_t pendingOutput() const { return out.size() - outPos; }
};

}  // namespace

struct TcpStoreServer::Impl {
  StoreServerOptions opts;
  std::string address;
  int port = 0;
  // How long a new connection has to prove the secret (StoreServerOptions.handshakeTimeout).
  Millis handshakeTimeout{10000};
  net::Fd listenFd;
  net::Fd wakeFd;  // written by stop()
  std::atomic<bool> stopping{false};
  std::atomic<int> refused{0};
  std::thread loopThread;
  std::mutex stopMu;

  // Owned by the loop thread.
  std::vector<std::unique_ptr<Unproven>> unproven;
  std::vector<std::unique_ptr<ServedClient>> clients;
  std::unordered_map<std::string, Bytes> data;
  Clock::time_point acceptPausedUntil{};

  std::string where() const { return net::Endpoint{address, port}.str(); }

  void wake() {
    uint64_t one = 1;
    ssize_t rc;
    do {
      rc = ::write(wakeFd.get(), &one, sizeof one);
    } while (rc < 0 && errno == EINTR);
  }

  void refuse(const std::string& peer, const std::string& why) {
    refused.fetch_add(1);
    CHORUS_WARN("store server ", where(), ": refused a connection from ", peer, ": ", why);
  }

  // Moves the handshakes of the connections that polled readable (or hung up) forward;
  // adopts those that completed, refuses those that failed or ran out of time. `ready[i]`
  // says whether unproven[i] polled with any event.
  void advanceUnproven(const std::vector<bool>& ready) {
    auto now = Clock::now();
    std::vector<std::unique_ptr<Unproven>> still;
    for (size_t i = 0; i < unproven.size(); ++i) {
      Unproven& u = *unproven[i];
      bool done = false;
      if (i < ready.size() && ready[i]) {
        try {
          done = u.handshake.advance(u.fd.get());
        } catch (const Error& e) {
          refuse(u.peer, e.what());
          continue;
        }
      }
      if (done) {
        adopt(std::move(u.fd), u.peer);
      } else if (now >= u.until) {
        refuse(u.peer, str("it did not complete the handshake within ", handshakeTimeout.count(), " ms (still ",
                           "waiting for ", u.handshake.waitingFor(), ")"));
      } else {
        still.push_back(std::move(unproven[i]));
      }
    }
    unproven.swap(still);
  }

  void acceptNew() {
    for (;;) {
      std::string peer;
      net::Fd fd;
      try {
        fd = net::acceptTcp(listenFd.get(), Deadline(Millis(0)), &peer);
      } catch (const Error& e) {
        // Out of descriptors, most likely: stop accepting briefly instead of spinning.
        CHORUS_WARN("store server ", where(), ": accept failed: ", e.what(), "; pausing new connections for 100 ms");
        acceptPausedUntil = Clock::now() + Millis(100);
        return;
      }
      if (!fd) return;
      if (unproven.size() >= kMaxPendingHandshakes) {
        refuse(peer, str(unproven.size(), " handshakes already pending"));
        continue;
      }
      try {
        // Before the handshake: its small writes must not wait on Nagle.
        net::setNoDelay(fd.get());
      } catch (const Error& e) {
        CHORUS_DEBUG("store server ", where(), ": dropping connection from ", peer, ": ", e.what());
        continue;
      }
      unproven.push_back(std::make_unique<Unproven>(
          Unproven{std::move(fd), peer, Clock::now() + handshakeTimeout, net::ServerHandshake(opts.secret)}));
    }
  }

  // A connection that proved the secret becomes a client.
  void adopt(net::Fd fd, const std::string& peer) {
    try {
      net::setNonBlocking(fd.get(), true);
    } catch (const Error& e) {
      CHORUS_DEBUG("store server ", where(), ": dropping client ", peer, ": ", e.what());
      return;
    }
    auto c = std::make_unique<ServedClient>();
    c->fd = std::move(fd);
    c->peer = peer;
    CHORUS_DEBUG("store server ", where(), ": client ", peer, " connected");
    clients.push_back(std::move(c));
  }

  void queueReply(ServedClient& c, const StoreMessage& reply) {
    Bytes frame = encodeStoreMessage(reply);
    if (c.outPos == c.out.size()) {
      c.out.clear();
      c.outPos = 0;
    }
    c.out.insert(c.out.end(), frame.begin(), frame.end());
    flush(c);
  }

  void flush(ServedClient& c) {
    while (!c.dead && c.outPos < c.out.size()) {
      ssize_t w = ::send(c.fd.get(), c.out.data() + c.outPos, c.out.size() - c.outPos, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (w > 0) {
        c.outPos += static_cast<size_t>(w);
      } else if (w < 0 && errno == EINTR) {
        continue;
      } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return;
      } else {
        CHORUS_DEBUG("store server ", where(), ": client ", c.peer, " gone while sending a reply");
        c.dead = true;
      }
    }
    if (c.outPos == c.out.size()) {
      c.out.clear();
      c.outPos = 0;
    }
  }

  void readInput(ServedClient& c) {
    size_t got = 0;
    while (got < kMaxReadPerTurn) {
      size_t old = c.in.size();
      c.in.resize(old + kReadChunk);
      ssize_t r = ::recv(c.fd.get(), c.in.data() + old, kReadChunk, MSG_DONTWAIT);
      c.in.resize(old + (r > 0 ? static_cast<size_t>(r) : 0));
      if (r > 0) {
        got += static_cast<size_t>(r);
        continue;
      }
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      CHORUS_DEBUG("store server ", where(), ": client ", c.peer, " disconnected");
      if (r == 0) {
        c.eof = true;
      } else {
        c.dead = true;
      }
      return;
    }
  }

  bool allPresent(const std::vector<std::string>& keys) const {
    for (const auto& k : keys) {
      if (data.find(k) == data.end()) return false;
    }
    return true;
  }

  // The reply to a GET or WAIT whose keys all exist.
  StoreMessage readyReply(const StoreMessage& req) const {
    StoreMessage reply;
    if (req.type == StoreMsgType::kGet) {
      reply.type = StoreMsgType::kValue;
      reply.value = data.at(req.keys[0]);
    } else {
      reply.type = StoreMsgType::kOk;
    }
    return reply;
  }

  StoreMessage timeoutReply(const StoreMessage& req) const {
    StoreMessage reply;
    reply.type = StoreMsgType::kTimeout;
    for (const auto& k : req.keys) {
      if (data.find(k) == data.end()) reply.keys.push_back(k);
    }
    return reply;
  }

  // Replies to every parked client whose keys now all exist.
  void wakeParked() {
    for (auto& c : clients) {
      if (c->parked && !c->dead && allPresent(c->parkedRequest.keys)) {
        c->parked = false;
        queueReply(*c, readyReply(c->parkedRequest));
      }
    }
  }

  void serve(ServedClient& c, const StoreMessage& req) {
    StoreMessage reply;
    switch (req.type) {
      case StoreMsgType::kSet:
        data[req.keys[0]] = req.value;
        reply.type = StoreMsgType::kOk;
        queueReply(c, reply);
        wakeParked();
        return;
      case StoreMsgType::kAdd: {
        // Counters live as 8 native-endian bytes, the same layout MemoryStore uses; a value
        // of any other size counts as 0.
        Bytes& b = data[req.keys[0]];
        int64_t value = 0;
        if (b.size() == sizeof value) std::memcpy(&value, b.data(), sizeof value);
        value = static_cast<int64_t>(static_cast<uint64_t>(value) + static_cast<uint64_t>(req.counter));
        b.resize(sizeof value);
        std::memcpy(b.data(), &value, sizeof value);
        reply.type = StoreMsgType::kCounter;
        reply.counter = value;
        queueReply(c, reply);
        wakeParked();
        return;
      }
      case StoreMsgType::kGet:
      case StoreMsgType::kWait:
        if (allPresent(req.keys)) {
          queueReply(c, readyReply(req));
        } else if (req.timeoutMs == 0) {
          queueReply(c, timeoutReply(req));
        } else {
          c.parked = true;
          c.parkedRequest = req;
          c.parkedUntil = Clock::now() + Millis(std::min(req.timeoutMs, kMaxTimeoutMs));
        }
        return;
      case StoreMsgType::kCheck:
        reply.type = StoreMsgType::kBool;
        reply.counter = allPresent(req.keys) ? 1 : 0;
        queueReply(c, reply);
        return;
      case StoreMsgType::kErase:
        reply.type = StoreMsgType::kBool;
        reply.counter = data.erase(req.keys[0]) > 0 ? 1 : 0;
        queueReply(c, reply);
        return;
      default:
        throw StoreProtocolError(str("a client sent a '", storeMsgTypeName(req.type), "' reply as a request"));
    }
  }

  // Serves the complete frames buffered for c, in order, until it parks. True if it served
  // at least one.
  bool serveBuffered(ServedClient& c) {
    size_t consumed = 0;
    bool served = false;
    try {
      while (!c.parked && !c.closeAfterFlush && !c.dead) {
        size_t total = storeFrameSize(c.in.data() + consumed, c.in.size() - consumed);
        if (total == 0 || c.in.size() - consumed < total) break;
        StoreMessage req = decodeStoreMessage(c.in.data() + consumed, total);
        consumed += total;
        serve(c, req);
        served = true;
      }
    } catch (const StoreProtocolError& e) {
      CHORUS_WARN("store server ", where(), ": dropping client ", c.peer, " after a malformed request: ", e.what());
      StoreMessage reply;
      reply.type = StoreMsgType::kError;
      reply.value = toBytes(e.what());
      c.in.clear();
      consumed = 0;
      c.parked = false;
      c.closeAfterFlush = true;
      queueReply(c, reply);
    }
    c.in.erase(c.in.begin(), c.in.begin() + static_cast<std::ptrdiff_t>(consumed));
    return served;
  }

  void expireParked() {
    auto now = Clock::now();
    for (auto& c : clients) {
      if (c->parked && !c->dead && now >= c->parkedUntil) {
        c->parked = false;
        queueReply(*c, timeoutReply(c->parkedRequest));
      }
    }
  }

  int pollTimeoutMs() const {
    auto now = Clock::now();
    Clock::time_point next = Clock::time_point::max();
    for (const auto& c : clients) {
      if (c->parked) next = std::min(next, c->parkedUntil);
    }
    for (const auto& u : unproven) next = std::min(next, u->until);
    if (acceptPausedUntil > now) next = std::min(next, acceptPausedUntil);
    if (next == Clock::time_point::max()) return -1;
    if (next <= now) return 0;
    auto ms = std::chrono::duration_cast<Millis>(next - now).count() + 1;
    return static_cast<int>(std::min<int64_t>(ms, 1 << 30));
  }

  bool wantsInput(const ServedClient& c) const {
    return !c.parked && !c.closeAfterFlush && c.pendingOutput() < kMaxPendingOutput;
  }

  // Runs serveLoop() until stop(). Should it fail unexpectedly (out of memory), it says so and
  // closes every connection, so clients fail at once instead of waiting out their timeouts.
  void loop() {
    try {
      serveLoop();
    } catch (const std::exception& e) {
      CHORUS_ERROR("store server ", where(), " stopped serving: ", e.what(),
                   "; every rank using this store will see its connection close");
      ::shutdown(listenFd.get(), SHUT_RDWR);
      clients.clear();
      unproven.clear();
    }
  }

  void serveLoop() {
    std::vector<pollfd> fds;
    while (!stopping) {
      fds.clear();
      fds.push_back({wakeFd.get(), POLLIN, 0});
      bool listening = Clock::now() >= acceptPausedUntil;
      fds.push_back({listening ? listenFd.get() : -1, POLLIN, 0});
      size_t nUnproven = unproven.size();
      for (const auto& u : unproven) fds.push_back({u->fd.get(), POLLIN, 0});
      size_t firstClient = fds.size();
      size_t polled = clients.size();
      for (const auto& c : clients) {
        // A parked client is not read from; POLLRDHUP still tells us if it goes away.
        short events = wantsInput(*c) ? POLLIN : POLLRDHUP;
        if (c->pendingOutput() > 0) events |= POLLOUT;
        fds.push_back({c->fd.get(), events, 0});
      }
      int rc = ::poll(fds.data(), fds.size(), pollTimeoutMs());
      if (rc < 0) {
        if (errno == EINTR) continue;
        throw SystemError("poll", errno);
      }
      if (stopping) return;
      // Readable, or hung up: either way advance() finds out which, at once. Every unproven
      // connection is visited, so deadlines pass even for the silent ones.
      std::vector<bool> spoke(nUnproven);
      for (size_t i = 0; i < nUnproven; ++i) spoke[i] = fds[2 + i].revents != 0;
      advanceUnproven(spoke);
      if (fds[1].revents != 0) acceptNew();
      for (size_t i = 0; i < polled; ++i) {
        ServedClient& c = *clients[i];
        short re = fds[firstClient + i].revents;
        if (re == 0) continue;
        if (re & POLLOUT) flush(c);
        if (re & POLLIN) {
          readInput(c);
        } else if (re & (POLLHUP | POLLERR | POLLRDHUP)) {
          CHORUS_DEBUG("store server ", where(), ": client ", c.peer, " hung up");
          c.dead = true;
        }
      }
      expireParked();
      // Serve until no client can make progress: a SET may unpark a client with more
      // requests already buffered.
      bool progress = true;
      while (progress) {
        progress = false;
        for (size_t i = 0; i < clients.size(); ++i) {
          if (!clients[i]->in.empty() && serveBuffered(*clients[i])) progress = true;
        }
      }
      std::erase_if(clients, [](const std::unique_ptr<ServedClient>& c) {
        return c->dead || c->eof || (c->closeAfterFlush && c->pendingOutput() == 0);
      });
    }
  }
};

TcpStoreServer::TcpStoreServer(const StoreServerOptions& opts) : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.opts = opts;
  if (opts.secret.empty()) {
    throw InvalidArgument(
        "TcpStoreServer: StoreServerOptions.secret is empty; every store needs a job secret (makeSecret(), or "
        "CHORUS_JOB_SECRET through detectBootstrap())");
  }
  if (opts.anyInterface) {
    s.address = "0.0.0.0";
  } else {
    s.address = opts.bindAddr.empty() ? "127.0.0.1" : opts.bindAddr;
    if (s.address == "0.0.0.0" || s.address == "::") {
      throw InvalidArgument(str("TcpStoreServer: bindAddr '", s.address,
                                "' listens on every interface; set anyInterface to ask for that explicitly"));
    }
  }
  if (opts.handshakeTimeout.count() < 0) {
    throw InvalidArgument(str("TcpStoreServer: handshakeTimeout ", opts.handshakeTimeout.count(),
                              " ms is negative; use 0 for the default"));
  }
  s.handshakeTimeout =
      opts.handshakeTimeout.count() > 0 ? opts.handshakeTimeout : std::min(defaultTimeout(), Millis(10000));
  s.listenFd = net::listenTcp(s.address, opts.port, &s.port);
  net::setNonBlocking(s.listenFd.get(), true);
  s.wakeFd = net::Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!s.wakeFd) throw SystemError("TcpStoreServer: eventfd", errno);
  s.loopThread = std::thread([this] { impl_->loop(); });
  CHORUS_INFO("store server listening on ", s.where());
}

TcpStoreServer::~TcpStoreServer() { stop(); }

int TcpStoreServer::port() const { return impl_->port; }
const std::string& TcpStoreServer::address() const { return impl_->address; }
int TcpStoreServer::refusedConnections() const { return impl_->refused.load(); }

void TcpStoreServer::stop() {
  Impl& s = *impl_;
  std::lock_guard<std::mutex> stopLock(s.stopMu);
  s.stopping = true;
  if (s.wakeFd) s.wake();
  if (s.loopThread.joinable()) s.loopThread.join();
  s.clients.clear();
  s.unproven.clear();
  s.listenFd.reset();
}

namespace {

Millis replyGrace(Millis opTimeout) { return std::min(opTimeout, Millis(10000)); }

}  // namespace

struct TcpStore::Impl {
  net::Endpoint ep;
  std::string secret;
  Millis timeout;
  std::string localAddr;
  std::mutex mu;
  std::vector<net::Fd> idle;

  std::string where() const { return ep.str(); }

  net::Fd open(const Deadline& deadline, bool first) {
    net::Fd fd;
    try {
      fd = net::connectTcp(ep, deadline);
    } catch (const Error& e) {
      throw TimeoutError(str("store at ", where(), ": could not connect: ", e.what(), "; ",
                             first ? "check CHORUS_STORE_ADDR/CHORUS_STORE_PORT (or MASTER_ADDR/MASTER_PORT) and "
                                     "that the process hosting the store (the launcher or rank 0) is running"
                                   : "the process hosting the store (the launcher or rank 0) may have exited; "
                                     "check its output"));
    }
    net::setNoDelay(fd.get());
    try {
      net::authenticate(fd.get(), secret, false, deadline);
    } catch (const AuthError& e) {
      throw AuthError(str("store at ", where(), ": ", e.what()));
    } catch (const TimeoutError& e) {
      throw TimeoutError(str("store at ", where(), ": ", e.what()));
    } catch (const Error& e) {
      throw Error(str("store at ", where(), ": ", e.what()));
    }
    return fd;
  }

  // Sends req on a pooled connection and returns the reply. `what` describes the request
  // for error messages ("get of key 'x'").
  StoreMessage request(const StoreMessage& req, const Deadline& deadline, const std::string& what) {
    Bytes frame;
    try {
      frame = encodeStoreMessage(req);
    } catch (const StoreProtocolError& e) {
      throw InvalidArgument(str("store at ", where(), ": ", what, ": ", e.what()));
    }
    net::Fd fd;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!idle.empty()) {
        fd = std::move(idle.back());
        idle.pop_back();
      }
    }
    if (!fd) fd = open(Deadline(std::min<Millis>(timeout, Millis(10000))), false);
    StoreMessage reply;
    try {
      net::writeFull(fd.get(), frame.data(), frame.size(), deadline);
      Bytes in(kStoreHeaderBytes);
      net::readFull(fd.get(), in.data(), in.size(), deadline);
      size_t total = storeFrameSize(in.data(), in.size());
      in.resize(total);
      net::readFull(fd.get(), in.data() + kStoreHeaderBytes, total - kStoreHeaderBytes, deadline);
      reply = decodeStoreMessage(in.data(), in.size());
    } catch (const StoreProtocolError& e) {
      throw Error(str("store at ", where(), ": ", what, ": malformed reply: ", e.what(),
                      "; is that port really a chorus store of the same version?"));
    } catch (const TimeoutError& e) {
      throw TimeoutError(str("store at ", where(), ": ", what, ": no reply in time: ", e.what(),
                             "; the store host may be overloaded or stuck"));
    } catch (const Error& e) {
      throw Error(str("store at ", where(), ": ", what, " failed: ", e.what(),
                      "; the process hosting the store (the launcher or rank 0) may have exited, check its output"));
    }
    if (reply.type == StoreMsgType::kError) {
      throw Error(str("store at ", where(), ": ", what, " rejected by the server: ", toString(reply.value)));
    }
    std::lock_guard<std::mutex> lock(mu);
    idle.push_back(std::move(fd));
    return reply;
  }

  [[noreturn]] void unexpected(const StoreMessage& reply, const std::string& what) {
    throw Error(str("store at ", where(), ": ", what, ": unexpected '", storeMsgTypeName(reply.type),
                    "' reply; is that port really a chorus store of the same version?"));
  }
};

TcpStore::TcpStore(const std::string& host, int port, const std::string& secret, Millis timeout)
    : impl_(std::make_unique<Impl>()) {
  impl_->ep = net::Endpoint{host, port};
  impl_->secret = secret;
  impl_->timeout = timeout;
  net::Fd fd = impl_->open(Deadline(timeout), true);
  impl_->localAddr = net::localAddress(fd.get());
  impl_->idle.push_back(std::move(fd));
}

TcpStore::~TcpStore() = default;

void TcpStore::set(const std::string& key, const Bytes& value) {
  StoreMessage req;
  req.type = StoreMsgType::kSet;
  req.keys = {key};
  req.value = value;
  std::string what = str("set of key '", key, "'");
  StoreMessage reply = impl_->request(req, Deadline(impl_->timeout), what);
  if (reply.type != StoreMsgType::kOk) impl_->unexpected(reply, what);
}

Bytes TcpStore::get(const std::string& key, Millis timeout) {
  StoreMessage req;
  req.type = StoreMsgType::kGet;
  req.keys = {key};
  req.timeoutMs = clampTimeout(timeout);
  std::string what = str("get of key '", key, "'");
  Deadline deadline(Millis(req.timeoutMs) + replyGrace(impl_->timeout));
  StoreMessage reply = impl_->request(req, deadline, what);
  if (reply.type == StoreMsgType::kTimeout) {
    throw TimeoutError(str("store at ", impl_->where(), ": ", what, " timed out after ", req.timeoutMs,
                           " ms; no rank set it: a rank may have failed to start, or ranks disagree about the "
                           "job id or world size"));
  }
  if (reply.type != StoreMsgType::kValue) impl_->unexpected(reply, what);
  return std::move(reply.value);
}

int64_t TcpStore::add(const std::string& key, int64_t delta) {
  StoreMessage req;
  req.type = StoreMsgType::kAdd;
  req.keys = {key};
  req.counter = delta;
  std::string what = str("add to key '", key, "'");
  StoreMessage reply = impl_->request(req, Deadline(impl_->timeout), what);
  if (reply.type != StoreMsgType::kCounter) impl_->unexpected(reply, what);
  return reply.counter;
}

void TcpStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  if (keys.empty()) return;
  StoreMessage req;
  req.type = StoreMsgType::kWait;
  req.keys = keys;
  req.timeoutMs = clampTimeout(timeout);
  std::string what = str("wait for key(s) ", joinKeys(keys));
  Deadline deadline(Millis(req.timeoutMs) + replyGrace(impl_->timeout));
  StoreMessage reply = impl_->request(req, deadline, what);
  if (reply.type == StoreMsgType::kTimeout) {
    throw TimeoutError(str("store at ", impl_->where(), ": waited ", req.timeoutMs, " ms for key(s) ",
                           joinKeys(reply.keys), " that no rank set: a rank may have failed to start, or ranks "
                           "disagree about the job id or world size"));
  }
  if (reply.type != StoreMsgType::kOk) impl_->unexpected(reply, what);
}

bool TcpStore::check(const std::vector<std::string>& keys) {
  if (keys.empty()) return true;
  StoreMessage req;
  req.type = StoreMsgType::kCheck;
  req.keys = keys;
  std::string what = str("check of key(s) ", joinKeys(keys));
  StoreMessage reply = impl_->request(req, Deadline(impl_->timeout), what);
  if (reply.type != StoreMsgType::kBool) impl_->unexpected(reply, what);
  return reply.counter != 0;
}

bool TcpStore::erase(const std::string& key) {
  StoreMessage req;
  req.type = StoreMsgType::kErase;
  req.keys = {key};
  std::string what = str("erase of key '", key, "'");
  StoreMessage reply = impl_->request(req, Deadline(impl_->timeout), what);
  if (reply.type != StoreMsgType::kBool) impl_->unexpected(reply, what);
  return reply.counter != 0;
}

std::string TcpStore::localAddress() const { return impl_->localAddr; }

}  // namespace chorus::comm
