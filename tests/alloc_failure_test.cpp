// Host memory running out part way through an operation that locks pages
// (issue 13, item 6): whatever allocation fails, the call fails with
// out_of_memory (or succeeds, where the library absorbs the failure), every
// page it locked is unlocked and announced, and the data is intact. Before
// the fix, pages stayed LOCKED forever and the next access parked on them.
//
// This binary replaces the global operator new: once armed, the Nth
// allocation of the calling thread from then on fails (std::bad_alloc).
// Each scenario runs its operation for N = 1, 2, ... until it makes fewer
// than N allocations, so every allocation of the call fails once. After each
// run, under a watchdog, the test reads every page from the CPU, migrates the
// range again (no page may be skipped as locked) and checks the invariants.
// The replacement keeps new/delete on malloc/free for every variant, so the
// sanitizers see matching pairs. Both fault modes (UHMM_FAULT_MODE=signal).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "signal_test_support.hpp"
#include "test_support.hpp"
#include "uhmm/uhmm.hpp"

namespace {

// 0: off. Otherwise the allocations left until the failing one.
thread_local long allocations_left = 0;
thread_local bool injected = false;  // a failure was injected since arming

bool fail_this_allocation() noexcept {
  if (allocations_left == 0 || --allocations_left > 0) return false;
  injected = true;
  return true;
}

void* allocate(std::size_t bytes, std::size_t align = 0) {
  if (fail_this_allocation()) throw std::bad_alloc();
  bytes = bytes == 0 ? 1 : bytes;
  void* p = nullptr;
  if (align <= alignof(std::max_align_t)) {
    p = std::malloc(bytes);
  } else if (::posix_memalign(&p, align, bytes) != 0) {
    p = nullptr;
  }
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void* allocate_nothrow(std::size_t bytes, std::size_t align = 0) noexcept {
  try {
    return allocate(bytes, align);
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}

}  // namespace

void* operator new(std::size_t n) { return allocate(n); }
void* operator new[](std::size_t n) { return allocate(n); }
void* operator new(std::size_t n, std::align_val_t a) { return allocate(n, static_cast<std::size_t>(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return allocate(n, static_cast<std::size_t>(a)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return allocate_nothrow(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return allocate_nothrow(n); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return allocate_nothrow(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return allocate_nothrow(n, static_cast<std::size_t>(a));
}
// The replaced new above allocates with malloc, so free is the match; GCC
// cannot tell once it inlines a delete into code that called new (-O1 under
// ASan: -Wmismatched-new-delete).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace uhmm::test {
namespace {

// Arms the calling thread for a scope: allocation `n` from now fails.
class InjectedFailure {
 public:
  explicit InjectedFailure(long n) {
    injected = false;
    allocations_left = n;
  }
  InjectedFailure(const InjectedFailure&) = delete;
  InjectedFailure& operator=(const InjectedFailure&) = delete;
  ~InjectedFailure() { disarm(); }
  // Ends the injection; true when a failure was injected.
  static bool disarm() noexcept {
    allocations_left = 0;
    return injected;
  }
};

constexpr std::size_t kPages = kPagesPerBlock + 16;  // two blocks: an operation fails after the first
constexpr std::size_t kBytes = kPages * kPageSize;
constexpr std::size_t kWords = kBytes / 8;
constexpr long kMostAllocations = 5000;  // an operation making more than this is a bug of its own

// What the range's words may read after the operation.
enum class Outcome {
  unchanged,         // the data as written
  unchanged_or_zero, // per page: as written, or zeros (discarded before)
  discarded,         // all zeros if the call completed, else per page as written or zeros
  plus_zero_or_one,  // every word as written, or every word + 1 (a kernel ran once)
};

struct Scenario {
  Outcome outcome = Outcome::unchanged;
  unsigned devices = 1;
  std::size_t pool_bytes = 64 * MiB;
  std::function<void(Context&, std::uint64_t*)> prepare = {};  // unarmed: the state the operation starts from
  std::function<void(Context&, std::uint64_t*)> operation = {};
  std::function<void(Context&, std::uint64_t*)> after = {};  // unarmed, before the checks (may be empty)
};

// The error the operation ended with, read once the injection is over.
struct Ending {
  bool bad_alloc = false;
  std::optional<Errc> code;
  std::string message;
};

Ending run_armed(Context& ctx, std::uint64_t* p, const Scenario& s, long n, bool* fired) {
  Ending out;
  {
    InjectedFailure armed(n);
    try {
      s.operation(ctx, p);
    } catch (const Error& e) {
      *fired = InjectedFailure::disarm();
      out.code = e.code();
      out.message = e.what();
    } catch (const std::bad_alloc&) {
      *fired = InjectedFailure::disarm();
      out.bad_alloc = true;
    }
    *fired = InjectedFailure::disarm();
  }
  return out;
}

void check_data(const std::uint64_t* p, Outcome outcome, bool completed, std::uint64_t seed, const std::string& at) {
  switch (outcome) {
    case Outcome::unchanged:
      ASSERT_EQ(first_mismatch(p, kBytes, seed), SIZE_MAX) << at;
      return;
    case Outcome::unchanged_or_zero:
    case Outcome::discarded:
      for (std::size_t q = 0; q < kPages; ++q) {
        const std::uint64_t* w = p + q * (kPageSize / 8);
        const bool zero = w[0] == 0 && w[kPageSize / 8 - 1] == 0;
        if (completed && outcome == Outcome::discarded) {
          ASSERT_TRUE(zero) << at << ": page " << q << " was not discarded";
        } else if (!zero) {
          for (std::size_t i = 0; i < kPageSize / 8; ++i) {
            ASSERT_EQ(w[i], pattern(seed, q * (kPageSize / 8) + i)) << at << ": page " << q;
          }
        }
      }
      return;
    case Outcome::plus_zero_or_one: {
      const std::uint64_t delta = p[0] - pattern(seed, 0);
      ASSERT_TRUE(delta == 0 || delta == 1) << at;
      if (completed) {
        ASSERT_EQ(delta, 1u) << at << ": the launch succeeded but its kernel did not run";
      }
      for (std::size_t i = 0; i < kWords; ++i) {
        ASSERT_EQ(p[i], pattern(seed, i) + delta) << at << ": word " << i;
      }
      return;
    }
  }
}

// A second range of the scenario's context, for operations that need one.
std::uint64_t* other = nullptr;

// Every page reachable, nothing locked, data as the outcome allows.
void check_after(Context& ctx, std::uint64_t* p, const Scenario& s, bool completed, std::uint64_t seed,
                 const std::string& at) {
  // A CPU read of every page: one still locked parks here forever.
  check_data(p, s.outcome, completed, seed, at);
  for (const PageState& state : ctx.residency(p, kBytes)) ASSERT_FALSE(state.locked) << at;
  ASSERT_TRUE(ctx.validate()) << at << ": " << ctx.validate().message;
  for (std::size_t k = 0; k < ctx.device_count(); ++k) {
    const MigrationResult there = ctx.migrate_to_device(p, kBytes, ctx.device_owner(k));
    EXPECT_EQ(there.skipped, 0u) << at;
    EXPECT_EQ(there.failed, 0u) << at << ": " << there.status.message;
  }
  if (::testing::Test::HasFatalFailure()) return;
  const MigrationResult back = ctx.migrate_to_host(p, kBytes);
  EXPECT_EQ(back.skipped, 0u) << at;
  EXPECT_EQ(back.failed, 0u) << at;
  check_data(p, s.outcome, completed, seed, at);
  ASSERT_TRUE(ctx.validate()) << at << ": " << ctx.validate().message;
}

// Fails each allocation of the operation in turn.
void run_scenario(const Scenario& s) {
  Context ctx(cpu_options(s.pool_bytes, true, s.devices));
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(kBytes));
  other = static_cast<std::uint64_t*>(ctx.allocate(kBytes));
  std::uint64_t seed = 0;
  long n = 1;
  for (bool fired = true; fired; ++n) {
    ASSERT_LT(n, kMostAllocations) << "the operation never ran out of allocations to fail";
    // A page left locked parks the next access, or the next operation that waits for it.
    Watchdog watchdog("an operation under an injected allocation failure, or the checks after it",
                      std::chrono::seconds(60));
    ++seed;
    ctx.migrate_to_host(p, kBytes);
    fill(p, kBytes, seed);
    s.prepare(ctx, p);
    const Ending end = run_armed(ctx, p, s, n, &fired);
    if (s.after) s.after(ctx, p);
    const std::string at = "allocation " + std::to_string(n) + " failed";
    const bool completed = !end.bad_alloc && !end.code;
    EXPECT_FALSE(end.bad_alloc) << at << ": std::bad_alloc escaped, not uhmm::Error";
    if (end.code) {
      EXPECT_EQ(*end.code, Errc::out_of_memory) << at << ": " << end.message;
    }
    check_after(ctx, p, s, completed, seed, at);
    if (::testing::Test::HasFatalFailure()) return;
  }
  EXPECT_GT(n, 2) << "the operation made no allocation";
  ctx.free(other);
  ctx.free(p);
}

void to_device(Context& ctx, std::uint64_t* p) {
  const MigrationResult r = ctx.migrate_to_device(p, kBytes, ctx.device_owner(0));
  ASSERT_EQ(r.failed, 0u) << r.status.message;
}

TEST(AllocFailure, MigrateToHost) {
  run_scenario({.prepare = to_device,
                .operation = [](Context& ctx, std::uint64_t* p) { ctx.migrate_to_host(p, kBytes); }});
}

TEST(AllocFailure, MigrateToDevice) {
  run_scenario({.prepare = [](Context&, std::uint64_t*) {},
                .operation = [](Context& ctx, std::uint64_t* p) { ctx.migrate_to_device(p, kBytes, 1); }});
}

TEST(AllocFailure, MigrateToDeviceFromAnotherDevice) {
  run_scenario({.devices = 2,
                .prepare = to_device,
                .operation = [](Context& ctx, std::uint64_t* p) { ctx.migrate_to_device(p, kBytes, 2); }});
}

TEST(AllocFailure, MigrateToDeviceReadMostly) {
  run_scenario({.prepare = [](Context& ctx, std::uint64_t* p) { ctx.advise(p, kBytes, Advice::set_read_mostly); },
                .operation = [](Context& ctx, std::uint64_t* p) { ctx.migrate_to_device(p, kBytes, 1); }});
}

// The device pages the range took: [0, device_pages_end).
std::size_t device_pages_end = 0;

TEST(AllocFailure, MigrateDeviceRange) {
  run_scenario({.prepare =
                    [](Context& ctx, std::uint64_t* p) {
                      to_device(ctx, p);
                      device_pages_end = 0;
                      for (const PageState& s : ctx.residency(p, kBytes))
                        device_pages_end = std::max<std::size_t>(device_pages_end, s.device.index + 1);
                    },
                .operation = [](Context& ctx, std::uint64_t*) {
                  migrate_device_range(ctx, 1, 0, device_pages_end);
                }});
}

TEST(AllocFailure, ShrinkDevicePool) {
  run_scenario({.prepare =
                    [](Context& ctx, std::uint64_t* p) {
                      to_device(ctx, p);
                    },
                .operation = [](Context& ctx, std::uint64_t*) { ctx.set_device_pool_limit(1, 0); },
                .after = [](Context& ctx, std::uint64_t*) { ctx.set_device_pool_limit(1, 64 * MiB); }});
}

// A pool too small for two ranges: migrating the other one evicts the
// range's pages (make_room, evict_device_range without waiting).
TEST(AllocFailure, EvictionUnderPressure) {
  run_scenario({.pool_bytes = 4 * MiB,
                .prepare =
                    [](Context& ctx, std::uint64_t* p) {
                      ctx.migrate_to_host(other, kBytes);
                      fill(other, kBytes, 99);
                      to_device(ctx, p);
                    },
                .operation = [](Context& ctx, std::uint64_t*) { ctx.migrate_to_device(other, kBytes, 1); },
                .after = [](Context&, std::uint64_t*) { ASSERT_EQ(first_mismatch(other, kBytes, 99), SIZE_MAX); }});
}

TEST(AllocFailure, UnsetReadMostly) {
  run_scenario({.prepare =
                    [](Context& ctx, std::uint64_t* p) {
                      ctx.advise(p, kBytes, Advice::set_read_mostly);
                      to_device(ctx, p);
                    },
                .operation =
                    [](Context& ctx, std::uint64_t* p) {
                      ctx.advise(p, kBytes, Advice::unset_read_mostly);
                      ctx.advise(p, kBytes, Advice::unset_read_mostly);  // nothing left to collapse
                    }});
}

TEST(AllocFailure, Discard) {
  run_scenario({.outcome = Outcome::discarded,
                .prepare = to_device,
                .operation = [](Context& ctx, std::uint64_t* p) { ctx.discard(p, kBytes); }});
}

// The arrays the calls below hand the library, made before the injection.
std::vector<std::uint64_t> pfns(kPages), src(kPages), dst(kPages);

// A snapshot's Status carries the error (snapshot_range is noexcept).
void snapshot(Context& ctx, std::uint64_t* p, std::uint64_t requests, MigrateVma* migrate) {
  SnapshotRange r;
  r.start = p;
  r.end = p + kWords;
  r.pfns = pfns.data();
  r.owner = 1;
  r.default_flags = requests;
  r.migrate = migrate;
  snapshot_range(ctx, r).raise_if_error();
}

TEST(AllocFailure, SnapshotBringsPagesToTheHost) {
  run_scenario({.prepare = to_device, .operation = [](Context& ctx, std::uint64_t* p) {
                  snapshot(ctx, p, SNAPSHOT_REQ_HOST, nullptr);
                }});
}

TEST(AllocFailure, SnapshotPopulates) {
  run_scenario({.outcome = Outcome::unchanged_or_zero,
                .prepare = [](Context& ctx, std::uint64_t* p) { ctx.discard(p, kBytes / 2); },
                .operation = [](Context& ctx, std::uint64_t* p) {
                  snapshot(ctx, p, SNAPSHOT_REQ_POPULATE, nullptr);
                }});
}

// setup (by a snapshot or directly), the driver's copy, pages, finalize.
void migrate_vma(Context& ctx, std::uint64_t* p, bool by_snapshot) {
  MigrateVma m;
  m.start = p;
  m.end = p + kWords;
  m.src = src.data();
  m.dst = dst.data();
  m.flags = MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_FAULT;
  m.destination = 1;
  if (by_snapshot) snapshot(ctx, p, SNAPSHOT_REQ_MIGRATE, &m);
  else migrate_vma_setup(ctx, m);
  (void)device_pagemap(ctx, 1).alloc_and_copy(m);
  migrate_vma_pages(ctx, m);
  migrate_vma_finalize(ctx, m);
}

TEST(AllocFailure, MigrateVma) {
  run_scenario({.prepare = [](Context&, std::uint64_t*) {},
                .operation = [](Context& ctx, std::uint64_t* p) { migrate_vma(ctx, p, false); }});
}

TEST(AllocFailure, SnapshotMigrates) {
  run_scenario({.prepare = [](Context&, std::uint64_t*) {},
                .operation = [](Context& ctx, std::uint64_t* p) { migrate_vma(ctx, p, true); }});
}

void add_one(Context& ctx, std::uint64_t* p, OwnerId device) {
  ctx.launch_on(device, kWords, [](std::size_t i, device_span<std::uint64_t> x) { x[i] += 1; },
                std::span<std::uint64_t>(p, kWords));
}

TEST(AllocFailure, Launch) {
  run_scenario({.outcome = Outcome::plus_zero_or_one,
                .prepare = [](Context& ctx, std::uint64_t* p) { ctx.migrate_to_device(p, kBytes / 2, 1); },
                .operation = [](Context& ctx, std::uint64_t* p) { add_one(ctx, p, 1); }});
}

// Read-mostly pages duplicated on device 2 come back to the host first.
TEST(AllocFailure, LaunchTakesPagesFromAnotherDevice) {
  run_scenario({.outcome = Outcome::plus_zero_or_one,
                .devices = 2,
                .prepare =
                    [](Context& ctx, std::uint64_t* p) {
                      ctx.advise(p, kBytes, Advice::set_read_mostly);
                      ctx.migrate_to_device(p, kBytes, 2);
                    },
                .operation = [](Context& ctx, std::uint64_t* p) { add_one(ctx, p, 1); },
                // Left duplicated on device 2, pages are not migrated to device 1.
                .after = [](Context& ctx, std::uint64_t* p) { ctx.advise(p, kBytes, Advice::unset_read_mostly); }});
}

// Pinned pages are held in place on the host (never-touched ones get zeros first).
TEST(AllocFailure, LaunchHoldsPinnedPagesInPlace) {
  run_scenario({.outcome = Outcome::plus_zero_or_one,
                .prepare = [](Context& ctx, std::uint64_t* p) { ctx.pin(p, kBytes / 2); },
                .operation = [](Context& ctx, std::uint64_t* p) { add_one(ctx, p, 1); },
                .after = [](Context& ctx, std::uint64_t* p) { ctx.unpin(p, kBytes / 2); }});
}

}  // namespace
}  // namespace uhmm::test
