// A rank program for tests/tools/launch_test.sh: each mode exercises one duty of
// `chorus launch` (output tagging, failure handling, signal forwarding, environment). It reads
// its rank from CHORUS_RANK directly, so it tests the launcher without the comm library.
//
//   launch_probe print LINES            LINES lines to stdout, one to stderr, then a last line
//                                       without a newline
//   launch_probe flood LINES            LINES long lines as fast as possible (interleaving)
//   launch_probe fail RANK CODE DIR     writes DIR/pid.<rank>; rank RANK exits CODE after 0.3 s,
//                                       the others sleep 60 s
//   launch_probe signal RANK SIG DIR    like fail, but rank RANK kills itself with signal SIG
//   launch_probe trap DIR [ignore]      on SIGTERM/SIGINT writes DIR/got.<rank> (the signal
//                                       number) and exits 0 (or, with ignore, keeps sleeping);
//                                       writes DIR/ready.<rank> once the handler is installed
//   launch_probe env                    prints the CHORUS_* variables it was given
//   launch_probe exit CODE              every rank exits CODE at once
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

namespace {

int gRank = 0;
char gGotPath[4096];
bool gIgnore = false;

void writeFile(const std::string& path, const std::string& text) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) {
    std::perror(path.c_str());
    std::exit(90);
  }
  std::fputs(text.c_str(), f);
  std::fclose(f);
}

extern "C" void onSignal(int sig) {
  int fd = ::open(gGotPath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    char buf[16];
    int n = 0;
    int s = sig;
    char rev[16];
    do {
      rev[n++] = static_cast<char>('0' + s % 10);
      s /= 10;
    } while (s > 0);
    for (int i = 0; i < n; ++i) buf[i] = rev[n - 1 - i];
    ssize_t w = ::write(fd, buf, static_cast<size_t>(n));
    (void)w;
    ::close(fd);
  }
  if (!gIgnore) _exit(0);
}

void sleepSeconds(double s) { std::this_thread::sleep_for(std::chrono::duration<double>(s)); }

int usage() {
  std::fprintf(stderr, "usage: launch_probe print|flood|fail|signal|trap|env|exit ... (see the source)\n");
  return 64;
}

}  // namespace

int main(int argc, char** argv) {
  const char* rankEnv = std::getenv("CHORUS_RANK");
  if (rankEnv == nullptr) {
    std::fprintf(stderr, "launch_probe: CHORUS_RANK is not set; run it under chorus launch\n");
    return 65;
  }
  gRank = std::atoi(rankEnv);
  if (argc < 2) return usage();
  std::string mode = argv[1];

  if (mode == "print" && argc == 3) {
    int lines = std::atoi(argv[2]);
    for (int i = 0; i < lines; ++i) std::printf("hello from rank %d line %d\n", gRank, i);
    std::fflush(stdout);
    std::fprintf(stderr, "warning from rank %d\n", gRank);
    std::printf("unterminated from rank %d", gRank);
    return 0;
  }
  if (mode == "flood" && argc == 3) {
    int lines = std::atoi(argv[2]);
    std::string pad(300, static_cast<char>('a' + gRank % 26));
    for (int i = 0; i < lines; ++i) std::printf("flood rank %d seq %d %s end\n", gRank, i, pad.c_str());
    return 0;
  }
  if ((mode == "fail" || mode == "signal") && argc == 5) {
    int target = std::atoi(argv[2]);
    int code = std::atoi(argv[3]);
    std::string dir = argv[4];
    writeFile(dir + "/pid." + std::to_string(gRank), std::to_string(::getpid()));
    std::printf("rank %d ready\n", gRank);
    std::fflush(stdout);
    if (gRank == target) {
      sleepSeconds(0.3);
      std::fprintf(stderr, "rank %d failing on purpose\n", gRank);
      if (mode == "signal") {
        ::signal(code, SIG_DFL);
        ::raise(code);
      }
      return code;
    }
    sleepSeconds(60);
    return 0;
  }
  if (mode == "trap" && (argc == 3 || argc == 4)) {
    std::string dir = argv[2];
    gIgnore = argc == 4 && std::strcmp(argv[3], "ignore") == 0;
    std::snprintf(gGotPath, sizeof gGotPath, "%s/got.%d", dir.c_str(), gRank);
    struct sigaction sa {};
    sa.sa_handler = onSignal;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGTERM, &sa, nullptr);
    ::sigaction(SIGINT, &sa, nullptr);
    writeFile(dir + "/pid." + std::to_string(gRank), std::to_string(::getpid()));
    writeFile(dir + "/ready." + std::to_string(gRank), "1");
    for (int i = 0; i < 600; ++i) sleepSeconds(0.1);
    return 0;
  }
  if (mode == "env" && argc == 2) {
    for (const char* name : {"CHORUS_RANK", "CHORUS_WORLD_SIZE", "CHORUS_LOCAL_RANK", "CHORUS_LOCAL_WORLD_SIZE",
                             "CHORUS_STORE_ADDR", "CHORUS_STORE_PORT", "CHORUS_JOB_ID", "CHORUS_TRANSPORT",
                             "CHORUS_TIMEOUT_MS", "CHORUS_NODE_RANK", "CHORUS_NNODES"}) {
      const char* v = std::getenv(name);
      std::printf("%s=%s\n", name, v != nullptr ? v : "<unset>");
    }
    const char* secret = std::getenv("CHORUS_JOB_SECRET");
    std::printf("CHORUS_JOB_SECRET_LEN=%zu\n", secret != nullptr ? std::strlen(secret) : 0);
    return 0;
  }
  if (mode == "exit" && argc == 3) return std::atoi(argv[2]);
  return usage();
}
