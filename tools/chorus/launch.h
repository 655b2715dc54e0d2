// The local launcher behind `chorus launch` (and every command that spawns ranks: `chorus
// bench`, later `chorus train --nproc`). It hosts the job's rendezvous store, starts N ranks
// of a program with the CHORUS_* variables that tell each one who it is and where the store
// is, tags their output with `[rank K] `, forwards SIGINT/SIGTERM, and stops the whole job
// when one rank fails.
//
// Process model: each rank is fork+exec'd into its own process group (so a rank's own
// children are signalled with it), with stdin from /dev/null, and dies with the launcher
// (PR_SET_PDEATHSIG) should the launcher be killed outright.
//
// Not thread-safe and not reentrant: it installs process-wide handlers for SIGINT, SIGTERM,
// SIGCHLD and SIGPIPE for the length of the call and restores the previous ones on return.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace chorus::tools {

struct LaunchOptions {
  int nproc = 1;
  // Passed to the ranks as CHORUS_TRANSPORT when not empty ("auto", "shm", "tcp", "mpi").
  std::string transport;
  // Passed to the ranks as CHORUS_TIMEOUT_MS when positive.
  int64_t timeoutMs = 0;
  // Address the store binds and the ranks dial. "0.0.0.0" binds every interface (the ranks
  // still dial 127.0.0.1).
  std::string storeAddr = "127.0.0.1";
  // How long a rank may take to exit after SIGTERM before it is sent SIGKILL.
  std::chrono::milliseconds grace{3000};
  // Prefix each line a rank writes to stdout / stderr with "[rank K] ". When off, the rank
  // writes straight to the launcher's stream (used by `chorus bench`, whose rank 0 prints a
  // table meant for parsing).
  bool tagStdout = true;
  bool tagStderr = true;
  // Extra variables for every rank, set after (and so overriding) the launcher's own.
  std::vector<std::pair<std::string, std::string>> extraEnv;
  // Ranks [0, tolerateBelow) may fail without the others being stopped (parameter-server
  // workers in asp/ssp, whose servers carry on without them); each such failure is reported,
  // and the launcher still exits with the first one's status once the job has ended.
  int tolerateBelow = 0;
  // Ranks [restartFrom, nproc) that fail while the job runs are started again, each up to
  // maxRestarts times (parameter servers: the new process reloads its shard and the workers
  // reconnect to it; parameter-server workers under chorus train: the new process rejoins at
  // the step the servers count for it), unless they exit with kFatalExitStatus. Then every rank gets CHORUS_REJOIN=accept and CHORUS_RESTART_COUNT=0, a
  // restarted one CHORUS_REJOIN=join and its restart number, and the ranks run over tcp.
  int restartFrom = 0;
  int maxRestarts = 0;
  // Elastic membership (docs/fault-tolerance.md): minWorkers > 0 makes the job elastic. A
  // rank that fails does not stop the others: the launcher writes the next generation's
  // members (the ranks still running, then replacements) to the store under
  // "chorus/elastic/members/<g>", and the workers re-form their group in their own processes
  // (train/elastic.h). It starts a replacement for each failed rank while replacements remain
  // (elasticRestarts in all) and the members stay within maxWorkers; when fewer than minWorkers
  // remain it stops the job. Every rank gets CHORUS_ELASTIC=1, CHORUS_ELASTIC_ID (its worker
  // id: its rank at launch, then new ids for replacements) and CHORUS_ELASTIC_GEN. A rank that
  // exits with kFatalExitStatus still ends the job. Single node, no parameter servers.
  int minWorkers = 0;
  int maxWorkers = 0;  // 0: nproc
  int elasticRestarts = 0;
  // Elastic: standby workers started with the job (ids nproc .. nproc + spares - 1, variable
  // CHORUS_ELASTIC_SPARE=1): each loads what a worker loads and waits. A failed worker is
  // replaced by a spare when one is ready (it counts as a replacement), else by a new process;
  // while replacements remain, the slot of a spare that joined starts a new one. Spares still
  // waiting when the members are done are told to exit. Needs minWorkers > 0.
  int spares = 0;
  // Elastic: why the job cannot run with this many workers, or "" when it can. A SIGUSR1
  // (growth by a spare) to a world it refuses is declined with that reason (chorus train: the
  // global batch must divide over the workers). Unset: every world is fine.
  std::function<std::string(int)> elasticWorldCheck;
  // Elastic: every worker keeps its rank and the world its size (tensor- and pipeline-parallel
  // jobs, whose ranks hold different shards: train/elastic.h). A failed worker's replacement,
  // a spare or a new process, takes its place in the next generation; when no replacement is
  // left the job stops, and SIGUSR1 does not grow it.
  bool elasticKeepPositions = false;
  // Prefix of the launcher's own messages.
  std::string messagePrefix = "chorus launch";
  // Multi-node jobs (torchrun's --nnodes): one launcher per node, each starting nproc ranks;
  // node K's are ranks K*nproc .. K*nproc + nproc - 1 of nnodes*nproc. Node 0's launcher hosts
  // the store on rdzvHost:rdzvPort (an address of node 0 that every node reaches), the others
  // dial it. Every launcher needs the same job secret (`secret`; the caller reads it from
  // CHORUS_JOB_SECRET or a file). nnodes 1 is the local launcher above.
  int nnodes = 1;
  int nodeRank = 0;
  std::string rdzvHost;
  int rdzvPort = 0;
  std::string secret;
};

// A rank that exits with this status ends the job even where ranks may fail alone
// (LaunchOptions::tolerateBelow): main.cc's status for a training run that diverged, whose
// servers would otherwise go on with the other workers.
inline constexpr int kFatalExitStatus = 3;

// Runs `argv` (argv[0] is a path or a name looked up on PATH) as ranks 0..nproc-1 on this
// host and blocks until all have exited. Returns the launcher's exit status: 0 when every rank
// exited 0; otherwise the first failing rank's exit status (128+signal when it was killed),
// after stopping the others and printing to stderr which rank failed and how. When the
// launcher itself receives SIGINT/SIGTERM it forwards it to every rank (a second one sends
// SIGKILL) and returns 128+signal.
// Throws chorus::InvalidArgument for bad options or a program that cannot be found, and
// chorus::Error subclasses when the store or a process cannot be started (no rank is left
// running then).
int launchLocal(const LaunchOptions& opts, const std::vector<std::string>& argv);

// The signal (SIGINT or SIGTERM) the last launchLocal received and forwarded, or 0: tells a
// job the user stopped from one whose rank failed (both return 128+signal).
int lastLaunchInterrupt();

// Resolves a program name the way execvp would: a name with a '/' is taken as is, other
// names are searched on PATH. Throws InvalidArgument naming the program when it is not an
// executable file.
std::string resolveProgram(const std::string& name);

// The path of the running executable (/proc/self/exe), for commands that re-run themselves.
std::string selfExecutable();

// `chorus launch ARGS...`: parses the flags and runs launchLocal. Returns the exit status.
int launchCommand(const std::vector<std::string>& args);
std::string launchHelp();

}  // namespace chorus::tools
