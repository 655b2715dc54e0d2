// The tcp transport's context: setting up the mesh and the progress loop that every wait
// runs. The per-connection protocol (frames, matching, held messages) lives in pair.cc.
//
// Setup, for rank i of n:
//   1. listen on bindAddr:0 (if some rank j > i will connect, or with acceptRejoin) and
//      publish "addr:port" under "<prefix>/tcp/i";
//   2. a helper thread accepts and, in one poll() loop over every accepted socket at once,
//      runs the server's side of the secret handshake (net::ServerHandshake) and reads the
//      16-byte hello (magic, version, rank, size) as the bytes arrive, so a stalled or hostile
//      client never holds up the real peers and costs no thread (HelloAcceptor below);
//   3. meanwhile this thread, for j = 0 .. i-1: reads j's address, connects, proves the
//      secret, sends its hello and checks j's answer;
//   4. once every j > i has been accepted, the helper is stopped and joined (sockets still
//      mid-handshake are closed).
// Ranks only ever wait on lower ranks' acceptors, which never wait on anybody, so setup cannot
// deadlock; it costs one handshake round trip per connection, overlapped across peers.
//
// Restarted ranks (opts.acceptRejoin, or opts.rejoin which implies it):
//   - after setup every rank keeps its listening socket (the highest rank, which accepts
//     nothing at setup, listens and publishes its address only for this) and runs a rejoin
//     acceptor thread, the same poll loop as setup's, each connection within kRejoinHandshake
//     and all of them at once: the secret handshake (as server), then the joiner's rejoin
//     hello, laid out like setup's but with magic "CHRJ" (so a setup hello here, or a rejoin
//     hello at setup, is refused), checked (same world size, another rank), then queued and
//     answered with ours, in that order:
//     once the restarted process has our answer, a request posted here goes to it. Then it
//     writes wakeFd_, so a blocked wait wakes;
//   - the caller's thread adopts queued sockets under mu_ (in progress(), pairFor(),
//     peerEpoch() and awaitPeer()): the old pair fails its requests with PeerError and is
//     retired, a new pair takes the socket, and the peer's epoch goes up by one;
//   - a restarted process (opts.rejoin) listens, publishes its new address under its key,
//     starts its acceptor, then connects to every other rank at once, on one short-lived
//     thread each: one connect attempt (a dead rank's port refuses at once), the handshake as
//     client, its rejoin hello, the answer; all of it within opts.timeout. A rank that fails
//     gets a pair that is failed from the start (PeerError), so the joiner still comes up when
//     some ranks are dead, and they can rejoin it later.
//
// Progress: one poll() over every live connection plus an eventfd that close() writes. A wait
// first spins (poll with timeout 0, then sched_yield, so an oversubscribed host still runs the
// peer it waits for) for CHORUS_SPIN_US, then blocks in poll() until the deadline with the
// mutex released, so close() from another thread can fail the requests and wake it.
#include "chorus/comm/transport/tcp/context.h"

#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <thread>

#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/common/logging.h"
#include "chorus/comm/net/auth.h"
#include "chorus/comm/rendezvous/store.h"

namespace chorus::comm {

std::unique_ptr<Transport> createTcpTransport(const TransportOptions& opts) {
  return std::make_unique<tcp::Context>(opts);
}

}  // namespace chorus::comm

namespace chorus::comm::tcp {

namespace {

constexpr uint32_t kHelloMagic = 0x48544843;   // "CHTH": a rank at setup
constexpr uint32_t kRejoinMagic = 0x4A524843;  // "CHRJ": a restarted process, and the answer to it
constexpr uint32_t kHelloVersion = 1;
constexpr size_t kHelloBytes = 16;
// How long the rejoin acceptor gives one connection to finish its handshake and hello. It
// serves every connection at once, so a stalled client holds up nobody but itself.
constexpr Millis kRejoinHandshake(5000);
// The same for a connection at setup (or less, when setup's own deadline comes first).
constexpr Millis kSetupHandshake(10000);
// Connections an acceptor takes through the handshake at once, besides the ranks it expects
// at setup. Beyond that it stops accepting (the next ones wait in the listen backlog) until
// one finishes or times out: a flood of connections costs at most this many descriptors.
constexpr size_t kMaxExtraHandshakes = 64;
// Socket buffers: large enough that a chunk in flight each way never fills them.
constexpr int kSocketBufferBytes = 4 << 20;
constexpr size_t kMinChunkBytes = 64;
constexpr size_t kMaxChunkBytes = size_t{1} << 30;

struct Hello {
  int rank = -1;
  int size = 0;
};

void put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t get32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}

void encodeHello(const Hello& h, uint32_t magic, uint8_t* out) {
  put32(out, magic);
  put32(out + 4, kHelloVersion);
  put32(out + 8, static_cast<uint32_t>(h.rank));
  put32(out + 12, static_cast<uint32_t>(h.size));
}

// Checks the magic and version: `magic` is the kind of hello this side expects.
Hello decodeHello(const uint8_t* in, uint32_t magic) {
  const uint32_t got = get32(in);
  if (got != magic && got == kRejoinMagic) {
    throw Error("it is a restarted process rejoining the job, but this rank is still setting up; hint: restart "
                "a rank only once the job has connected");
  }
  if (got != magic && got == kHelloMagic) {
    throw Error("it sent a setup hello to a rank that finished setup (a rank of another job with a stale "
                "address in the store?)");
  }
  if (got != magic || get32(in + 4) != kHelloVersion) {
    throw Error("bad tcp transport hello (not a chorus rank of the same version)");
  }
  Hello h;
  h.rank = static_cast<int>(get32(in + 8));
  h.size = static_cast<int>(get32(in + 12));
  return h;
}

std::string storeKey(const std::string& prefix, int rank) { return prefix + "/tcp/" + std::to_string(rank); }

// "host:port" or "[v6]:port".
net::Endpoint parseEndpoint(const std::string& s, int peer) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size()) {
    throw Error(str("rank ", peer, " published the tcp address '", s, "', which is not host:port"));
  }
  net::Endpoint ep;
  ep.host = s.substr(0, colon);
  if (ep.host.size() >= 2 && ep.host.front() == '[' && ep.host.back() == ']') {
    ep.host = ep.host.substr(1, ep.host.size() - 2);
  }
  const std::string port = s.substr(colon + 1);
  char* end = nullptr;
  long p = std::strtol(port.c_str(), &end, 10);
  if (*end != '\0' || p <= 0 || p > 65535) {
    throw Error(str("rank ", peer, " published the tcp address '", s, "' with a bad port"));
  }
  ep.port = static_cast<int>(p);
  return ep;
}

void tuneSocket(int fd) {
  net::setNoDelay(fd);
  net::setBufferSizes(fd, kSocketBufferBytes);
}

std::string rankList(const std::vector<int>& ranks) {
  std::string s;
  for (size_t k = 0; k < ranks.size(); ++k) s += (k > 0 ? ", " : "") + std::to_string(ranks[k]);
  return s;
}

// Sends a few bytes on a fresh socket, whose empty send buffer always has room: never waits
// (an expired deadline only matters if the send would block, and then it fails at once).
void sendNow(int fd, const uint8_t* data, size_t n) { net::writeFull(fd, data, n, Deadline(Millis(0))); }

// Takes the connections arriving on a listening socket through the server's side of the
// secret handshake and the read of their 16-byte hello, every connection at once in one
// thread's poll() loop: bytes are read as they arrive, so a client that connects and says
// nothing, or a byte, or stalls halfway, costs a descriptor and a poll slot until its own
// deadline, and no thread. At most `maxPending` connections are in progress; beyond that the
// listening socket is left alone (new connections wait in its backlog) and a line is logged.
class HelloAcceptor {
 public:
  struct Arrival {
    net::Fd fd;
    std::string addr;
    uint8_t hello[kHelloBytes];
  };
  // Decides about a connection whose hello arrived: takes arrival.fd (or leaves it, to close
  // it quietly) and returns, or throws to refuse it.
  using OnHello = std::function<void(Arrival&)>;
  // A connection that failed the handshake, sent a bad hello, or ran out of time.
  using OnRefused = std::function<void(const std::string& addr, const std::string& why)>;

  // `who` names the acceptor in log lines ("rank 3 (setup)").
  HelloAcceptor(int listenFd, int stopFd, std::string secret, Millis perConnection, size_t maxPending, std::string who)
      : listenFd_(listenFd),
        stopFd_(stopFd),
        secret_(std::move(secret)),
        perConnection_(perConnection),
        maxPending_(maxPending),
        who_(std::move(who)) {}

  // Runs until stopFd polls readable or `until` passes; the connections still in progress
  // are then closed without a word (that is our shutdown, not a refusal). Throws SystemError
  // if poll() itself fails.
  void run(const Deadline& until, const OnHello& onHello, const OnRefused& onRefused) {
    std::vector<pollfd> fds;
    for (;;) {
      const auto now = Clock::now();
      const bool full = pending_.size() >= maxPending_;
      if (full && !saidFull_) {
        CHORUS_WARN(who_, ": ", pending_.size(), " connections are mid-handshake, the most it takes at once; ",
                    "further connections wait in the listen backlog until one completes or times out (",
                    perConnection_.count(), " ms each). Many connections that never finish the handshake: a port "
                    "scan, or something other than chorus connecting to this port?");
      }
      saidFull_ = full;
      fds.clear();
      fds.push_back({stopFd_, POLLIN, 0});
      fds.push_back({full || now < acceptPausedUntil_ ? -1 : listenFd_, POLLIN, 0});
      Clock::time_point next = until.at();
      for (const auto& c : pending_) {
        fds.push_back({c->fd.get(), POLLIN, 0});
        next = std::min(next, c->until);
      }
      if (now < acceptPausedUntil_) next = std::min(next, acceptPausedUntil_);
      int timeoutMs = 0;
      if (next > now) {
        auto ms = std::chrono::duration_cast<Millis>(next - now).count() + 1;
        timeoutMs = static_cast<int>(std::min<int64_t>(ms, 1 << 30));
      }
      int rc = ::poll(fds.data(), fds.size(), timeoutMs);
      if (rc < 0) {
        if (errno == EINTR) continue;
        throw SystemError(str(who_, ": poll on the tcp listening socket"), errno);
      }
      if (fds[0].revents != 0 || until.expired()) return;
      const size_t n = pending_.size();
      for (size_t i = 0; i < n; ++i) {
        if (fds[2 + i].revents != 0) advance(*pending_[i], onHello, onRefused);
      }
      const auto later = Clock::now();
      for (auto& c : pending_) {
        if (c->fd && later >= c->until) {
          onRefused(c->addr, str("it did not complete the handshake and hello within ", perConnection_.count(),
                                 " ms (still waiting for ", waitingFor(*c), ")"));
          c->fd.reset();
        }
      }
      std::erase_if(pending_, [](const std::unique_ptr<Incoming>& c) { return !c->fd; });
      if (fds[1].revents != 0) acceptNew(onRefused);
    }
  }

 private:
  struct Incoming {
    Incoming(net::Fd f, std::string a, Clock::time_point u, const std::string& secret)
        : fd(std::move(f)), addr(std::move(a)), until(u), handshake(secret) {}
    net::Fd fd;  // reset once the connection is decided
    std::string addr;
    Clock::time_point until;
    net::ServerHandshake handshake;
    uint8_t hello[kHelloBytes] = {};
    size_t helloGot = 0;
  };

  static std::string waitingFor(const Incoming& c) {
    if (!c.handshake.done()) return c.handshake.waitingFor();
    return str("its hello (", c.helloGot, " of ", kHelloBytes, " bytes)");
  }

  void advance(Incoming& c, const OnHello& onHello, const OnRefused& onRefused) {
    try {
      if (!c.handshake.advance(c.fd.get())) return;
      while (c.helloGot < kHelloBytes) {
        ssize_t r = ::recv(c.fd.get(), c.hello + c.helloGot, kHelloBytes - c.helloGot, MSG_DONTWAIT);
        if (r > 0) {
          c.helloGot += static_cast<size_t>(r);
        } else if (r < 0 && errno == EINTR) {
          continue;
        } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          return;
        } else if (r == 0) {
          throw Error(str("connection closed after the handshake, before its hello (", c.helloGot, " of ",
                          kHelloBytes, " bytes)"));
        } else {
          throw SystemError("receive of the hello", errno);
        }
      }
      Arrival a{std::move(c.fd), c.addr, {}};
      std::memcpy(a.hello, c.hello, kHelloBytes);
      onHello(a);
    } catch (const std::exception& e) {
      onRefused(c.addr, e.what());
    }
    c.fd.reset();
  }

  void acceptNew(const OnRefused& onRefused) {
    while (pending_.size() < maxPending_) {
      std::string addr;
      net::Fd fd;
      try {
        fd = net::acceptTcp(listenFd_, Deadline(Millis(0)), &addr);
      } catch (const std::exception& e) {
        // Out of descriptors, most likely: back off instead of spinning on a listener that
        // stays readable.
        CHORUS_WARN(who_, ": accept failed: ", e.what(), "; pausing new connections for 100 ms");
        acceptPausedUntil_ = Clock::now() + Millis(100);
        return;
      }
      if (!fd) return;
      try {
        tuneSocket(fd.get());  // before the handshake: its small writes must not wait on Nagle
      } catch (const std::exception& e) {
        onRefused(addr, e.what());
        continue;
      }
      pending_.push_back(std::make_unique<Incoming>(std::move(fd), std::move(addr), Clock::now() + perConnection_,
                                                    secret_));
    }
  }

  const int listenFd_;
  const int stopFd_;
  const std::string secret_;
  const Millis perConnection_;
  const size_t maxPending_;
  const std::string who_;
  std::vector<std::unique_ptr<Incoming>> pending_;
  Clock::time_point acceptPausedUntil_{};
  bool saidFull_ = false;
};

// Shared between the setup thread and the acceptor thread.
struct AcceptState {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<net::Fd> peers;  // by rank, filled by the acceptor
  int connected = 0;
  int expected = 0;
  std::exception_ptr error;  // the acceptor itself failed
};

}  // namespace

Context::Context(const TransportOptions& opts) : rank_(opts.rank), size_(opts.size) {
  if (size_ < 1 || rank_ < 0 || rank_ >= size_) {
    throw InvalidArgument(str("tcp transport: rank ", rank_, " is not in a world of size ", size_));
  }
  if (size_ > 1 && opts.store == nullptr) {
    throw InvalidArgument(str("rank ", rank_, ": the tcp transport needs a store to exchange addresses"));
  }
  int64_t chunk = envInt("CHORUS_TCP_CHUNK_BYTES");
  if (chunk < static_cast<int64_t>(kMinChunkBytes) || chunk > static_cast<int64_t>(kMaxChunkBytes)) {
    throw ConfigError(str("CHORUS_TCP_CHUNK_BYTES=", chunk, " is out of range [", kMinChunkBytes, ", ",
                          kMaxChunkBytes, "]"));
  }
  chunk_ = static_cast<size_t>(chunk);
  int64_t spinUs = envInt("CHORUS_SPIN_US");
  if (spinUs < 0) throw ConfigError(str("CHORUS_SPIN_US=", spinUs, " must not be negative"));
  spinNs_ = spinUs * 1000;
  wakeFd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wakeFd_) throw SystemError(str("rank ", rank_, ": eventfd for the tcp transport"), errno);

  acceptRejoin_ = opts.acceptRejoin || opts.rejoin;
  secret_ = opts.secret;
  pairs_.resize(static_cast<size_t>(size_));
  epochs_.assign(static_cast<size_t>(size_), 0);
  if (size_ == 1) return;
  if (opts.rejoin) {
    rejoinMesh(opts);
    return;
  }
  std::vector<net::Fd> fds = connectMesh(opts);
  for (int j = 0; j < size_; ++j) {
    if (j == rank_) continue;
    pairs_[j] = std::make_unique<Pair>(rank_, j, std::move(fds[j]), chunk_);
  }
  if (acceptRejoin_) startRejoinAcceptor();
}

Context::~Context() { close(); }

void Context::startListening(const TransportOptions& opts) {
  std::string host = opts.bindAddr;
  if (host.empty()) {
    auto* tcpStore = dynamic_cast<TcpStore*>(opts.store);
    host = tcpStore != nullptr ? tcpStore->localAddress() : "127.0.0.1";
  }
  int port = 0;
  listenFd_ = net::listenTcp(host, 0, &port, std::max(128, size_));
  // Non-blocking, so a connection reset between poll() and accept() cannot block the acceptor.
  net::setNonBlocking(listenFd_.get(), true);
  listenAddress_ = net::Endpoint{host, port}.str();
}

std::vector<net::Fd> Context::connectMesh(const TransportOptions& opts) {
  const Deadline deadline(opts.timeout);
  std::vector<net::Fd> fds(static_cast<size_t>(size_));

  AcceptState st;
  st.peers.resize(static_cast<size_t>(size_));
  st.expected = size_ - 1 - rank_;

  net::Fd stopFd;
  std::thread acceptor;
  // With acceptRejoin every rank listens, for restarted processes after setup.
  if (st.expected > 0 || acceptRejoin_) startListening(opts);
  if (st.expected > 0) {
    stopFd.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!stopFd) throw SystemError(str("rank ", rank_, ": eventfd for tcp setup"), errno);

    // A connection whose setup hello arrived: check it, answer with ours, keep the socket.
    auto onHello = [this, &st](HelloAcceptor::Arrival& a) {
      Hello h = decodeHello(a.hello, kHelloMagic);
      if (h.size != size_) throw Error(str("it says the world size is ", h.size, ", ours is ", size_));
      if (h.rank <= rank_ || h.rank >= size_) {
        throw Error(str("it says it is rank ", h.rank, ", but only ranks ", rank_ + 1, "..", size_ - 1,
                        " connect to rank ", rank_));
      }
      {
        std::lock_guard<std::mutex> lock(st.mu);
        if (st.peers[h.rank]) throw Error(str("rank ", h.rank, " is already connected"));
      }
      uint8_t buf[kHelloBytes];
      encodeHello(Hello{rank_, size_}, kHelloMagic, buf);
      sendNow(a.fd.get(), buf, kHelloBytes);
      std::lock_guard<std::mutex> lock(st.mu);
      st.peers[h.rank] = std::move(a.fd);
      ++st.connected;
      st.cv.notify_all();
    };
    auto onRefused = [this](const std::string& addr, const std::string& why) {
      ++refused_;
      CHORUS_WARN("rank ", rank_, ": refused a tcp connection from ", addr, " on ", listenAddress_, ": ", why);
    };
    acceptor = std::thread([this, &st, &deadline, &opts, onHello, onRefused, sfd = stopFd.get()] {
      try {
        HelloAcceptor acc(listenFd_.get(), sfd, opts.secret, std::min(kSetupHandshake, opts.timeout),
                          static_cast<size_t>(st.expected) + kMaxExtraHandshakes, str("rank ", rank_, " (setup)"));
        acc.run(deadline, onHello, onRefused);
      } catch (...) {
        std::lock_guard<std::mutex> lock(st.mu);
        st.error = std::current_exception();
        st.cv.notify_all();
      }
    });
  }

  // Stops the acceptor, whatever happens below; connections still mid-handshake close.
  auto stopAccepting = [&] {
    if (!acceptor.joinable()) return;
    uint64_t one = 1;
    ssize_t w = ::write(stopFd.get(), &one, sizeof one);
    (void)w;  // an eventfd write of 1 cannot fail short of overflow
    acceptor.join();
  };

  try {
    if (listenFd_) opts.store->set(storeKey(opts.prefix, rank_), toBytes(listenAddress_));
    for (int j = 0; j < rank_; ++j) fds[j] = connectTo(j, opts, deadline);
    std::unique_lock<std::mutex> lock(st.mu);
    while (st.connected < st.expected && !st.error && !deadline.expired()) {
      st.cv.wait_for(lock, Millis(std::clamp(deadline.remainingMs(), 1, 100)));
    }
  } catch (...) {
    stopAccepting();
    throw;
  }
  stopAccepting();
  if (!acceptRejoin_) listenFd_.reset();

  if (st.error) std::rethrow_exception(st.error);
  if (st.connected < st.expected) {
    std::vector<int> missing;
    for (int j = rank_ + 1; j < size_; ++j) {
      if (!st.peers[j]) missing.push_back(j);
    }
    throw TimeoutError(str("rank ", rank_, ": tcp transport setup timed out after ", opts.timeout.count(),
                           " ms: no connection from rank(s) ", rankList(missing), " to ", listenAddress_, "; ",
                           refused_.load(), " connection(s) were refused (wrong job secret or not a chorus rank)",
                           "; hint: check that every rank started with the same world size and secret and can",
                           " reach this address (set CHORUS_BIND_ADDR to pick another interface)"));
  }
  for (int j = rank_ + 1; j < size_; ++j) fds[j] = std::move(st.peers[j]);
  return fds;
}

net::Fd Context::connectTo(int peer, const TransportOptions& opts, const Deadline& deadline) {
  const std::string key = storeKey(opts.prefix, peer);
  std::string addr;
  net::Fd fd;
  try {
    addr = toString(opts.store->get(key, Millis(std::max(1, deadline.remainingMs()))));
    fd = net::connectTcp(parseEndpoint(addr, peer), deadline);
  } catch (const TimeoutError& e) {
    throw TimeoutError(str("rank ", rank_, ": connecting to rank ", peer,
                           addr.empty() ? str(" (store key '", key, "')") : str(" at ", addr), " timed out: ",
                           e.what(), "; hint: is rank ", peer, " running?"));
  }
  tuneSocket(fd.get());
  try {
    net::authenticate(fd.get(), opts.secret, /*isServer=*/false, deadline);
  } catch (const AuthError& e) {
    throw AuthError(str("rank ", rank_, ": rank ", peer, " at ", addr, " failed the job-secret handshake: ",
                        e.what()));
  }
  uint8_t buf[kHelloBytes];
  encodeHello(Hello{rank_, size_}, kHelloMagic, buf);
  Hello h;
  try {
    net::writeFull(fd.get(), buf, kHelloBytes, deadline);
    net::readFull(fd.get(), buf, kHelloBytes, deadline);
    h = decodeHello(buf, kHelloMagic);
  } catch (const TimeoutError&) {
    throw;
  } catch (const Error& e) {
    throw PeerError(str("rank ", rank_, ": rank ", peer, " at ", addr, " refused our connection after the ",
                        "handshake: ", e.what(), "; hint: every rank must run with the same world size (",
                        size_, " here)"),
                    peer);
  }
  if (h.rank != peer || h.size != size_) {
    throw PeerError(str("rank ", rank_, ": the process at ", addr, " (store key '", key, "') says it is rank ",
                        h.rank, " of ", h.size, ", expected rank ", peer, " of ", size_,
                        "; hint: a stale address in the store (two jobs sharing a prefix?)"),
                    peer);
  }
  return fd;
}

void Context::rejoinMesh(const TransportOptions& opts) {
  const Deadline deadline(opts.timeout);
  startListening(opts);
  // Our new address replaces the dead process's, so a later restart of another rank finds us.
  opts.store->set(storeKey(opts.prefix, rank_), toBytes(listenAddress_));
  startRejoinAcceptor();
  try {
    std::vector<net::Fd> fds(static_cast<size_t>(size_));
    std::vector<std::string> errors(static_cast<size_t>(size_));
    std::vector<std::thread> threads;
    auto joinAll = [&threads] {
      for (auto& t : threads) t.join();
    };
    try {
      for (int j = 0; j < size_; ++j) {
        if (j == rank_) continue;
        threads.emplace_back([this, j, &opts, &deadline, &fds, &errors] {
          try {
            fds[j] = rejoinPeer(j, opts, deadline);
          } catch (const std::exception& e) {
            errors[j] = e.what();
          }
        });
      }
    } catch (...) {
      joinAll();
      throw;
    }
    joinAll();
    int answered = 0;
    for (int j = 0; j < size_; ++j) {
      if (j == rank_) continue;
      if (fds[j]) {
        pairs_[j] = std::make_unique<Pair>(rank_, j, std::move(fds[j]), chunk_);
        ++answered;
        continue;
      }
      const std::string why = str("rank ", j, " did not answer the rejoin of rank ", rank_, ": ", errors[j],
                                  "; hint: rank ", j, " is dead, or runs without CHORUS_REJOIN=accept or with",
                                  " another job secret; requests to it fail until it restarts and rejoins");
      CHORUS_WARN("rank ", rank_, ": ", why);
      auto failed = std::make_unique<Pair>(rank_, j, net::Fd(), chunk_);
      failed->abort(why, /*peerError=*/true);
      pairs_[j] = std::move(failed);
    }
    CHORUS_INFO("rank ", rank_, ": rejoined the job from ", listenAddress_, "; ", answered, " of ", size_ - 1,
                " rank(s) answered");
  } catch (...) {
    stopRejoinAcceptor();
    throw;
  }
}

net::Fd Context::rejoinPeer(int peer, const TransportOptions& opts, const Deadline& deadline) {
  const std::string key = storeKey(opts.prefix, peer);
  const std::string addr = toString(opts.store->get(key, Millis(std::max(1, deadline.remainingMs()))));
  // One attempt: a dead rank's port refuses at once, and waiting on it would hold up the rest.
  net::Fd fd = net::connectTcp(parseEndpoint(addr, peer), deadline, /*retry=*/false);
  tuneSocket(fd.get());
  net::authenticate(fd.get(), opts.secret, /*isServer=*/false, deadline);
  uint8_t buf[kHelloBytes];
  encodeHello(Hello{rank_, size_}, kRejoinMagic, buf);
  net::writeFull(fd.get(), buf, kHelloBytes, deadline);
  net::readFull(fd.get(), buf, kHelloBytes, deadline);
  const Hello h = decodeHello(buf, kRejoinMagic);
  if (h.rank != peer || h.size != size_) {
    throw Error(str("the process at ", addr, " (store key '", key, "') says it is rank ", h.rank, " of ", h.size,
                    ", expected rank ", peer, " of ", size_, " (a stale address: two jobs sharing a prefix?)"));
  }
  return fd;
}

void Context::startRejoinAcceptor() {
  rjStopFd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!rjStopFd_) throw SystemError(str("rank ", rank_, ": eventfd for the tcp rejoin acceptor"), errno);
  rjThread_ = std::thread([this] { acceptRejoins(); });
}

void Context::stopRejoinAcceptor() {
  std::thread t;
  {
    std::lock_guard<std::mutex> lock(rjMu_);
    rjStop_ = true;
    t = std::move(rjThread_);
    rjQueue_.clear();
    rjQueued_ = false;
  }
  if (!t.joinable()) return;
  uint64_t one = 1;
  ssize_t w = ::write(rjStopFd_.get(), &one, sizeof one);
  (void)w;  // an eventfd write of 1 cannot fail short of overflow
  t.join();
  listenFd_.reset();  // a late restart is refused at once instead of waiting in the backlog
}

void Context::acceptRejoins() {
  auto onRefused = [this](const std::string& addr, const std::string& why) {
    {
      std::lock_guard<std::mutex> lock(rjMu_);
      if (rjStop_) return;  // closing: a failure now is our own shutdown, not a refusal
    }
    ++refused_;
    CHORUS_WARN("rank ", rank_, ": refused a restarted process's connection from ", addr, " on ", listenAddress_,
                ": ", why);
  };
  try {
    HelloAcceptor acc(listenFd_.get(), rjStopFd_.get(), secret_, kRejoinHandshake, kMaxExtraHandshakes,
                      str("rank ", rank_, " (rejoin acceptor on ", listenAddress_, ")"));
    acc.run(Deadline::never(), [this](HelloAcceptor::Arrival& a) { serveRejoin(a.fd, a.addr, a.hello); },
            onRefused);
  } catch (const std::exception& e) {
    CHORUS_WARN("rank ", rank_, ": stopped taking restarted processes on ", listenAddress_, ": ", e.what());
  }
}

void Context::serveRejoin(net::Fd& fd, const std::string& addr, const uint8_t* helloBytes) {
  const Hello h = decodeHello(helloBytes, kRejoinMagic);
  if (h.size != size_) throw Error(str("it says the world size is ", h.size, ", ours is ", size_));
  if (h.rank < 0 || h.rank >= size_ || h.rank == rank_) {
    throw Error(str("it says it restarts rank ", h.rank, ", which is not another rank of [0, ", size_, ")"));
  }
  uint8_t buf[kHelloBytes];
  encodeHello(Hello{rank_, size_}, kRejoinMagic, buf);
  {
    // Queue the socket before answering, under the lock: once the restarted process has our
    // answer (its constructor returned), a request posted here goes to it. 16 bytes on a
    // fresh socket never wait for room, so the lock is held for one send().
    std::lock_guard<std::mutex> lock(rjMu_);
    if (rjStop_) return;  // closing: the socket closes unanswered
    const int raw = fd.get();
    rjQueue_.push_back(Rejoiner{h.rank, std::move(fd), addr});
    rjQueued_ = true;
    try {
      sendNow(raw, buf, kHelloBytes);
    } catch (...) {
      fd = std::move(rjQueue_.back().fd);  // still ours: adopting needs this lock
      rjQueue_.pop_back();
      rjQueued_ = !rjQueue_.empty();
      throw;
    }
  }
  uint64_t one = 1;
  ssize_t w = ::write(wakeFd_.get(), &one, sizeof one);
  (void)w;  // an eventfd write of 1 cannot fail short of overflow
}

void Context::adoptRejoins() {
  if (!rjQueued_.load()) return;
  std::vector<Rejoiner> queue;
  {
    std::lock_guard<std::mutex> lock(rjMu_);
    queue.swap(rjQueue_);
    rjQueued_ = false;
  }
  if (closed_) return;  // the queued sockets close here
  for (Rejoiner& r : queue) {
    auto fresh = std::make_unique<Pair>(rank_, r.rank, std::move(r.fd), chunk_);
    std::unique_ptr<Pair>& slot = pairs_[r.rank];
    if (slot) {
      slot->abort(str("rank ", r.rank, " was replaced by a restarted process (from ", r.addr,
                      "); hint: requests posted before the replacement belonged to the old process; post them",
                      " again (peerEpoch tells when a peer was replaced)"),
                  /*peerError=*/true);
      retired_.push_back(std::move(slot));
    }
    slot = std::move(fresh);
    ++epochs_[r.rank];
    CHORUS_INFO("rank ", rank_, ": a restarted process at ", r.addr, " took the place of rank ", r.rank,
                " (epoch ", epochs_[r.rank], ")");
  }
}

void Context::checkPeer(int peer, const char* op) const {
  if (peer < 0 || peer >= size_ || peer == rank_) {
    throw InvalidArgument(str("rank ", rank_, ": tcp ", op, " with peer ", peer, ": the peer must be another rank in [0, ",
                              size_, ")"));
  }
}

Pair& Context::pairFor(int peer, const char* op) {
  if (closed_) throw Error(closedMessage());
  checkPeer(peer, op);
  adoptRejoins();  // a request posted after a restarted process connected goes to it
  return *pairs_[peer];
}

uint64_t Context::peerEpoch(int peer) {
  std::lock_guard<std::mutex> lock(mu_);
  if (peer == rank_) return 0;
  checkPeer(peer, "peerEpoch");
  adoptRejoins();
  return epochs_[peer];
}

uint64_t Context::awaitPeer(int peer, uint64_t epoch, const Deadline& deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  checkPeer(peer, "awaitPeer");
  if (!acceptRejoin_) {
    throw Error(str("rank ", rank_, ": awaitPeer(", peer, "): this tcp transport was made without acceptRejoin, so no",
                    " restarted process can take rank ", peer, "'s place; hint: start every rank with",
                    " CHORUS_REJOIN=accept (TransportOptions::acceptRejoin)"));
  }
  const int64_t start = nowNs();
  const int64_t spinUntil = start + spinNs_;
  for (;;) {
    if (closed_) throw Error(closedMessage());
    adoptRejoins();
    if (epochs_[peer] > epoch) return epochs_[peer];
    if (deadline.expired()) {
      throw TimeoutError(str("rank ", rank_, ": no restarted process took the place of rank ", peer, " (epoch ",
                             epochs_[peer], ", waiting for more than ", epoch, ") within ",
                             (nowNs() - start) / 1000000, " ms; hint: is the restarted process running? was it",
                             " started with the same job secret and CHORUS_REJOIN=join? it must reach ",
                             listenAddress_));
    }
    if (nowNs() < spinUntil) {
      progress(lock, 0);
      sched_yield();
    } else {
      progress(lock, std::max(1, deadline.remainingMs()));
    }
  }
}

std::string Context::closedMessage() const {
  return str("rank ", rank_, ": the tcp transport is closed; hint: create a new one (or a new group)");
}

RequestPtr Context::isend(int peer, uint64_t tag, uint64_t sig, const void* data, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  Pair& pair = pairFor(peer, "isend");
  if (data == nullptr && bytes > 0) {
    throw InvalidArgument(str("rank ", rank_, ": isend of ", bytes, " bytes to rank ", peer, " from a null buffer"));
  }
  auto req = std::make_shared<TcpRequest>(Request::Kind::kSend, peer, tag, sig, bytes,
                                          const_cast<uint8_t*>(static_cast<const uint8_t*>(data)), nullptr);
  pair.postSend(req);
  return req;
}

RequestPtr Context::irecv(int peer, uint64_t tag, uint64_t sig, void* data, size_t bytes,
                             const RecvReduce* reduce) {
  std::lock_guard<std::mutex> lock(mu_);
  Pair& pair = pairFor(peer, "irecv");
  if (data == nullptr && bytes > 0) {
    throw InvalidArgument(str("rank ", rank_, ": irecv of ", bytes, " bytes from rank ", peer, " into a null buffer"));
  }
  if (reduce != nullptr && bytes % dtypeSize(reduce->dtype) != 0) {
    throw InvalidArgument(str("rank ", rank_, ": irecv from rank ", peer, " reducing ", dtypeName(reduce->dtype),
                              ": ", bytes, " bytes is not a whole number of elements"));
  }
  auto req = std::make_shared<TcpRequest>(Request::Kind::kRecv, peer, tag, sig, bytes, static_cast<uint8_t*>(data),
                                          reduce);
  pair.postRecv(req);
  return req;
}

void Context::progress(std::unique_lock<std::mutex>& lock, int timeoutMs) {
  adoptRejoins();
  if (polling_ == 0) retired_.clear();  // no poll() lists their fds any more
  pollFds_.clear();
  pollPairs_.clear();
  pollFds_.push_back({wakeFd_.get(), POLLIN, 0});
  pollPairs_.push_back(nullptr);
  for (auto& p : pairs_) {
    if (!p) continue;
    short events = p->pollEvents();
    if (events == 0) continue;
    pollFds_.push_back({p->fd(), events, 0});
    pollPairs_.push_back(p.get());
  }
  int n;
  if (timeoutMs > 0) {
    ++polling_;
    lock.unlock();
    n = ::poll(pollFds_.data(), pollFds_.size(), timeoutMs);
    const int err = errno;
    lock.lock();
    --polling_;
    errno = err;
  } else {
    n = ::poll(pollFds_.data(), pollFds_.size(), 0);
  }
  if (n < 0) {
    if (errno == EINTR) return;
    throw SystemError(str("rank ", rank_, ": poll over the tcp connections"), errno);
  }
  if (n == 0 || closed_) return;
  if (pollFds_[0].revents != 0) {
    uint64_t v;
    ssize_t r = ::read(wakeFd_.get(), &v, sizeof v);
    (void)r;  // only drains the wake-up; nothing to read is fine
  }
  for (size_t k = 1; k < pollFds_.size(); ++k) {
    if (pollFds_[k].revents != 0) pollPairs_[k]->onEvents(pollFds_[k].revents);
  }
}

size_t Context::wait(std::span<const RequestPtr> reqs, const Deadline& deadline, WaitMode mode) {
  std::unique_lock<std::mutex> lock(mu_);
  const int64_t start = nowNs();
  const int64_t spinUntil = start + spinNs_;
  for (;;) {
    // A closed transport has failed every request: that is no answer to "which one".
    if (mode != WaitMode::kAll && closed_) throw Error(closedMessage());
    if (const size_t found = waitResult(reqs, mode); found != kPending) return found;
    if (closed_) throw Error(closedMessage());
    if (deadline.expired()) return deadlinePassed(reqs, mode, nowNs() - start);
    // Under a millisecond left (a short slice of a mixed wait) poll() cannot block that
    // briefly: poll without blocking until the deadline.
    const int leftMs = deadline.remainingMs();
    if (nowNs() < spinUntil || leftMs == 0) {
      progress(lock, 0);
      // On a host with more ranks than cores the peer we wait for may need this very core.
      sched_yield();
    } else {
      progress(lock, leftMs);
    }
  }
}

std::string Context::progressOf(const Request& r) const {
  const auto* t = dynamic_cast<const TcpRequest*>(&r);
  return str("(", t != nullptr ? t->transferred : 0, " of ", r.bytes, " bytes)");
}

bool Context::test(const RequestPtr& req) {
  std::unique_lock<std::mutex> lock(mu_);
  CHORUS_CHECK(req != nullptr, "rank ", rank_, ": test on a null request");
  if (!req->done && !closed_) progress(lock, 0);
  return checkDone(*req);
}

void Context::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!closed_) {
      closed_ = true;
      const std::string why = str("rank ", rank_, " closed its tcp transport");
      for (auto& p : pairs_) {
        if (p) p->abort(why);
      }
      uint64_t one = 1;
      ssize_t w = ::write(wakeFd_.get(), &one, sizeof one);
      (void)w;  // an eventfd write of 1 cannot fail short of overflow
    }
  }
  stopRejoinAcceptor();  // outside mu_: the acceptor never takes it, but joining takes a while
}

}  // namespace chorus::comm::tcp
