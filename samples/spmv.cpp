// Sparse matrix-vector product y = A x on a generated CSR matrix, computed on a
// device; then the CPU reads only a few rows of y (say, the nodes a query asks
// about). Fault-driven migration brings back only the pages those rows live on,
// not the whole of y, the matrix or x: the sample checks the sampled rows
// against a CPU reference and that what came back is bounded by what was read.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "sample_support.hpp"

namespace {

// A random sparse matrix in CSR form with `per_row` entries per row, plus a
// band on the diagonal so every row is non-empty and the result depends on x.
struct Csr {
  std::vector<std::uint32_t> row_start, column;
  std::vector<float> value;
};

Csr generate(std::uint32_t rows, std::uint32_t per_row, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::uint32_t> col(0, rows - 1);
  std::uniform_int_distribution<int> small(1, 9);
  Csr m;
  m.row_start.reserve(rows + 1);
  m.row_start.push_back(0);
  for (std::uint32_t r = 0; r < rows; ++r) {
    m.column.push_back(r);
    m.value.push_back(2.0f);
    for (std::uint32_t k = 1; k < per_row; ++k) {
      m.column.push_back(col(rng));
      m.value.push_back(static_cast<float>(small(rng)) * 0.25f);
    }
    m.row_start.push_back(static_cast<std::uint32_t>(m.column.size()));
  }
  return m;
}

template <class T>
uhmm::Buffer<T> managed_copy(uhmm::Context& ctx, const std::vector<T>& v) {
  uhmm::Buffer<T> b(ctx, v.size());
  std::copy(v.begin(), v.end(), b.begin());
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"uhmm SpMV: y = A x on a device, a few rows read back on the CPU through faults"};
  std::uint32_t rows = 1u << 20;
  std::uint32_t per_row = 8;
  std::size_t queries = 64;
  bool fault_ahead = false;
  std::uint64_t seed = 1;
  app.add_option("--rows", rows, "matrix rows (and columns)")->check(CLI::Range(1u, 1u << 26));
  app.add_option("--per-row", per_row, "non-zeros per row")->check(CLI::Range(1u, 64u));
  app.add_option("--queries", queries, "rows of y the CPU reads")->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20));
  app.add_flag("--fault-ahead,!--no-fault-ahead", fault_ahead,
               "bring a faulting page's 2 MiB block back with it (default off: only touched pages come back)");
  app.add_option("--seed", seed, "input generator seed");
  CLI11_PARSE(app, argc, argv);

  try {
    const Csr host = generate(rows, per_row, seed);
    std::vector<float> x_host(rows);
    for (std::uint32_t i = 0; i < rows; ++i) x_host[i] = static_cast<float>(i % 17) - 8.0f;

    const std::size_t bytes =
        (host.row_start.size() + host.column.size()) * 4 + host.value.size() * 4 + 2 * std::size_t{rows} * 4;
    uhmm::ContextOptions options = uhmm::samples::options_with_pool(bytes + 12 * uhmm::samples::MiB);
    options.fault_ahead = fault_ahead;
    uhmm::Context ctx(options);
    fmt::print("SpMV: {} rows, {} non-zeros, {:.1f} MiB of managed data, {} backend, fault-ahead {}\n", rows,
               host.column.size(), static_cast<double>(bytes) / uhmm::samples::MiB,
               ctx.device_info(ctx.device_owner()).backend, fault_ahead ? "on" : "off");

    auto row_start = managed_copy(ctx, host.row_start);
    auto column = managed_copy(ctx, host.column);
    auto value = managed_copy(ctx, host.value);
    auto x = managed_copy(ctx, x_host);
    uhmm::Buffer<float> y(ctx, rows);

    ctx.launch(
        rows,
        [](std::size_t r, uhmm::device_span<const std::uint32_t> start, uhmm::device_span<const std::uint32_t> col,
           uhmm::device_span<const float> val, uhmm::device_span<const float> xs, uhmm::device_span<float> ys) {
          float sum = 0;
          for (std::uint32_t k = start[r]; k < start[r + 1]; ++k) sum += val[k] * xs[col[k]];
          ys[r] = sum;
        },
        std::span<const std::uint32_t>(row_start.span()), std::span<const std::uint32_t>(column.span()),
        std::span<const float>(value.span()), std::span<const float>(x.span()), y.span());
    const uhmm::Counters before = ctx.counters();

    // The query: a few random rows of y, checked against the same sum on the CPU
    // (same order of additions, so the floats match exactly).
    std::mt19937_64 rng(seed + 1);
    std::uniform_int_distribution<std::uint32_t> pick(0, rows - 1);
    std::set<std::size_t> pages_read, blocks_read;
    std::size_t wrong = 0;
    for (std::size_t q = 0; q < queries; ++q) {
      const std::uint32_t r = pick(rng);
      float expect = 0;
      for (std::uint32_t k = host.row_start[r]; k < host.row_start[r + 1]; ++k)
        expect += host.value[k] * x_host[host.column[k]];
      wrong += y[r] != expect;
      pages_read.insert(r * sizeof(float) / uhmm::kPageSize);
      blocks_read.insert(r * sizeof(float) / uhmm::kChunkSize);
    }

    const uhmm::Counters after = ctx.counters();
    uhmm::samples::print_counters(after);
    const std::uint64_t back = after.pages_to_host - before.pages_to_host;
    const std::uint64_t y_pages = y.range_bytes() / uhmm::kPageSize;
    const std::uint64_t bound = fault_ahead ? blocks_read.size() * uhmm::kPagesPerBlock : pages_read.size();
    fmt::print("\nthe CPU read {} rows on {} pages of y; {} of y's {} pages came back ({:.2f}%), bound {}\n", queries,
               pages_read.size(), back, y_pages, 100.0 * static_cast<double>(back) / static_cast<double>(y_pages),
               bound);
    if (back < pages_read.size() || back > bound) {
      fmt::print(stderr, "\nFAILED: {} pages came back; expected between {} and {}\n", back, pages_read.size(), bound);
      return 1;
    }
    return uhmm::samples::verdict(wrong, queries, "rows of y");
  } catch (const uhmm::Error& e) {
    fmt::print(stderr, "uhmm spmv: {}\n", e.what());
    return 2;
  }
}
