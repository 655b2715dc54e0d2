// The byte-level text corpus (see text.h for the split and window rules).
//
// Why split by file rather than by position: the fortune files are topical (computers,
// songs-poems, zippy, ...) and each fortune is short, so a validation split cut out of the
// middle of one stream shares authors, quotes and formatting with its neighbours in training.
// Whole files held out measure how the model does on text it has not seen the like of, and the
// rule needs no offsets that change when a file does.
//
// Why one global batch per step sliced by dp rank, rather than a generator per rank: the
// union of the ranks' windows is then the same at every dp size, which is what the dp x tp
// equivalence test and a resume at another dp size need.
#include "chorus/train/text.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numbers>
#include <system_error>

#include <ATen/CPUGeneratorImpl.h>

#include "chorus/common/error.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;

constexpr int kValidationEvery = 10;  // sorted index i is validation when i % 10 == 1
constexpr int kValidationIndex = 1;

std::string corpusHint(const std::string& dir) {
  return str("install the Debian package fortunes (apt install fortunes), which puts its text in ", kFortunesDir,
             ", or set data.path to a folder of plain-text files (now '", dir, "')");
}

bool listed(const fs::directory_entry& e) {
  const std::string name = e.path().filename().string();
  if (name.empty() || name[0] == '.') return false;
  if (name.size() >= 4 && name.compare(name.size() - 4, 4, ".dat") == 0) return false;
  std::error_code ec;
  // symlink_status: Debian's *.u8 names are links to the same files, which would count twice.
  return e.symlink_status(ec).type() == fs::file_type::regular;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

void checkContext(const TextCorpus& corpus, int64_t context) {
  if (context < 1) throw InvalidArgument(str("a text window needs context >= 1 bytes, got ", context));
  if (corpus.size() < context + 1)
    throw InvalidArgument(str(corpus.name, " holds ", corpus.size(), " bytes, too few for a window of context ",
                              context, " (it needs context + 1 bytes); lower model.context or add text"));
}

}  // namespace

std::vector<std::string> textCorpusFiles(const std::string& dir, bool train) {
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec)
    throw InvalidArgument(str("cannot read the text corpus folder '", dir, "': ", ec.message(), "; ",
                              corpusHint(dir)));
  std::vector<std::string> names;
  for (const fs::directory_entry& e : it)
    if (listed(e)) names.push_back(e.path().filename().string());
  if (names.size() < 2)
    throw InvalidArgument(str("the text corpus folder '", dir, "' holds ", names.size(),
                              " text file", names.size() == 1 ? "" : "s", " (not counting *.dat indexes, links and "
                              "hidden files); it needs at least 2, one for validation; ", corpusHint(dir)));
  std::sort(names.begin(), names.end());
  std::vector<std::string> out;
  for (size_t i = 0; i < names.size(); ++i)
    if ((static_cast<int>(i % kValidationEvery) == kValidationIndex) != train) out.push_back(names[i]);
  return out;
}

TextCorpus loadTextCorpus(const std::string& dir, bool train) {
  TextCorpus c;
  c.name = str(dir, train ? " (train)" : " (validation)");
  c.files = textCorpusFiles(dir, train);
  std::vector<uint8_t> bytes;
  for (const std::string& name : c.files) {
    const std::string path = (fs::path(dir) / name).string();
    std::ifstream in(path, std::ios::binary);
    if (!in) throw InvalidArgument(str("cannot open the text file ", path, "; ", corpusHint(dir)));
    bytes.insert(bytes.end(), std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (in.bad()) throw InvalidArgument(str("cannot read the text file ", path, " to its end"));
  }
  if (bytes.empty())
    throw InvalidArgument(str(c.name, ": its files (", c.files.front(), ", ...) are all empty; ", corpusHint(dir)));
  c.bytes = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
  std::copy(bytes.begin(), bytes.end(), c.bytes.data_ptr<uint8_t>());
  return c;
}

TextBatch windowsAt(const TextCorpus& corpus, const torch::Tensor& starts, int64_t context) {
  checkContext(corpus, context);
  if (starts.dim() != 1 || starts.scalar_type() != torch::kLong)
    throw InvalidArgument(chorus::str("window starts must be a 1-d int64 tensor, got ", starts.dim(), " dimensions of ",
                                      c10::toString(starts.scalar_type())));
  const int64_t lastStart = corpus.size() - context - 1;
  if (starts.numel() > 0) {
    const int64_t lo = starts.min().item<int64_t>(), hi = starts.max().item<int64_t>();
    if (lo < 0 || hi > lastStart)
      throw InvalidArgument(str("a window start of ", lo < 0 ? lo : hi, " is outside [0, ", lastStart, "] of ",
                                corpus.name, " (", corpus.size(), " bytes, context ", context, ")"));
  }
  // [B, T+1] byte positions; one gather, then ids and targets are two views of it.
  torch::Tensor idx = starts.unsqueeze(1) + torch::arange(context + 1, torch::kLong).unsqueeze(0);
  torch::Tensor w = corpus.bytes.index_select(0, idx.reshape({-1})).reshape(idx.sizes()).to(torch::kLong);
  return {w.slice(1, 0, context).contiguous(), w.slice(1, 1, context + 1).contiguous()};
}

TextBatch randomWindows(const TextCorpus& corpus, int64_t batch, int64_t context, at::Generator& gen) {
  checkContext(corpus, context);
  if (batch < 0) throw InvalidArgument(str("a batch of ", batch, " windows; it must be >= 0"));
  // randint(0, high) with an int64 result, as Python's torch.randint(0, high, (B,), generator=g)
  // draws: the same generator state gives the same starts in bench/model-parallel/gpt_torch.py.
  torch::Tensor starts = torch::randint(0, corpus.size() - context, {batch}, gen, torch::kLong);
  return windowsAt(corpus, starts, context);
}

uint64_t windowSeed(uint64_t seed, int64_t step) {
  return splitmix64(splitmix64(seed) ^ static_cast<uint64_t>(step));
}

TextBatch trainWindows(const TextCorpus& corpus, int64_t globalBatch, int64_t context, uint64_t seed, int64_t step,
                       int rank, int ranks) {
  if (ranks < 1 || rank < 0 || rank >= ranks)
    throw InvalidArgument(str("data-parallel rank ", rank, " of ", ranks, " does not exist"));
  if (globalBatch < 1 || globalBatch % ranks != 0)
    throw InvalidArgument(str("a global batch of ", globalBatch, " windows cannot be split evenly over ", ranks,
                              " data-parallel ranks; use a positive multiple of ", ranks));
  at::Generator gen = at::detail::createCPUGenerator(windowSeed(seed, step));
  TextBatch all = randomWindows(corpus, globalBatch, context, gen);
  const int64_t per = globalBatch / ranks;
  if (ranks == 1) return all;
  return {all.ids.slice(0, rank * per, (rank + 1) * per).contiguous(),
          all.targets.slice(0, rank * per, (rank + 1) * per).contiguous()};
}

TextBatch evalWindows(const TextCorpus& corpus, int64_t count, int64_t context) {
  checkContext(corpus, context);
  const int64_t lastStart = corpus.size() - context - 1;
  if (count < 1 || count > lastStart + 1)
    throw InvalidArgument(str(count, " validation windows of context ", context, " do not fit ", corpus.name, " (",
                              corpus.size(), " bytes): it has ", lastStart + 1, " distinct starts; use 1 to ",
                              lastStart + 1));
  torch::Tensor starts = torch::empty({count}, torch::kLong);
  auto* s = starts.data_ptr<int64_t>();
  // i * lastStart <= lastStart^2 < 2^63 unless a split is over 3 GB; computed in 128 bits
  // regardless, so that the result is exact, as gpt_torch.py's Python integers are.
  for (int64_t i = 0; i < count; ++i)
    s[i] = count == 1 ? 0
                      : static_cast<int64_t>(static_cast<unsigned __int128>(i) * static_cast<uint64_t>(lastStart) /
                                             static_cast<uint64_t>(count - 1));
  return windowsAt(corpus, starts, context);
}

double bitsPerByte(double meanLossNats) { return meanLossNats / std::numbers::ln2; }

}  // namespace chorus::train
