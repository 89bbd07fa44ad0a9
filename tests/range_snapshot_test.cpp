// snapshot_range (hmm_range_fault): the kernel HMM selftests' snapshot
// scenarios (tools/testing/selftests/mm/hmm-tests.c: anon read, anon write,
// populate, snapshot of mixed states, two devices) adapted to uhmm, the one
// walk of SNAPSHOT_REQ_MIGRATE against migrate_vma_setup(FAULT), and bad input.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"
#include "uhmm/uhmm.hpp"

namespace uhmm::test {
namespace {

constexpr std::uint64_t kState = SNAPSHOT_PFN_VALID | SNAPSHOT_PFN_WRITE | SNAPSHOT_PFN_ERROR |
                                 SNAPSHOT_PFN_DEVICE_PRIVATE | SNAPSHOT_PFN_OTHER_DEVICE | SNAPSHOT_PFN_MIGRATE;

std::vector<std::uint64_t> snap(Context& ctx, void* p, std::size_t bytes, OwnerId owner = kNoOwner,
                                std::uint64_t flags = 0, Status* status = nullptr, std::size_t* populated = nullptr) {
  std::vector<std::uint64_t> pfns(bytes / kPageSize, 0);
  SnapshotRange r;
  r.start = p;
  r.end = static_cast<std::byte*>(p) + bytes;
  r.pfns = pfns.data();
  r.owner = owner;
  r.default_flags = flags;
  const Status s = snapshot_range(ctx, r);
  if (status != nullptr) *status = s;
  else EXPECT_TRUE(s) << s.message;
  if (populated != nullptr) *populated = r.populated;
  return pfns;
}

std::uint64_t device_bits(DevicePage page) {
  return (std::uint64_t{page.owner} << SNAPSHOT_PFN_OWNER_SHIFT) | (std::uint64_t{page.index} << SNAPSHOT_PFN_INDEX_SHIFT);
}

TEST(RangeSnapshot, AnonReadReportsWrittenPagesValidAndUntouchedOnesNot) {
  Context ctx(cpu_options(64 * MiB, false));
  const std::size_t n = 16;
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  fill(p, 8 * kPageSize, 1);
  const Counters before = ctx.counters();
  const auto pfns = snap(ctx, p, n * kPageSize);
  for (std::size_t i = 0; i < n; ++i)
    EXPECT_EQ(pfns[i], i < 8 ? SNAPSHOT_PFN_VALID | SNAPSHOT_PFN_WRITE : 0u) << "page " << i;
  // A plain snapshot changes nothing.
  EXPECT_EQ(count(ctx.residency(p, n * kPageSize), Residency::Empty), 8u);
  EXPECT_EQ(ctx.counters().pages_populated, before.pages_populated);
  EXPECT_EQ(ctx.counters().faults_zero_fill, before.faults_zero_fill);
  ctx.free(p);
}

TEST(RangeSnapshot, PopulateMakesNeverTouchedPagesZeroFilledHostPages) {
  Context ctx(cpu_options(64 * MiB, false));
  const std::size_t n = 600;  // more than a block
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  fill(p, 10 * kPageSize, 2);
  std::size_t populated = 0;
  const auto pfns = snap(ctx, p, n * kPageSize, kNoOwner, SNAPSHOT_REQ_POPULATE, nullptr, &populated);
  EXPECT_EQ(populated, n - 10);
  EXPECT_EQ(ctx.counters().pages_populated, n - 10);
  for (std::size_t i = 0; i < n; ++i) EXPECT_EQ(pfns[i], SNAPSHOT_PFN_VALID | SNAPSHOT_PFN_WRITE) << "page " << i;
  EXPECT_EQ(count(ctx.residency(p, n * kPageSize), Residency::System), n);
  const Counters c = ctx.counters();
  // Mapped already: reading takes no fault; the contents are zeros, and written data stayed.
  for (std::size_t i = 10 * kPageSize; i < n * kPageSize; i += 512) ASSERT_EQ(p[i], std::byte{0});
  EXPECT_EQ(first_mismatch(p, 10 * kPageSize, 2), SIZE_MAX);
  EXPECT_EQ(ctx.counters().faults_zero_fill, c.faults_zero_fill);
  // Anon write after populate: stores land.
  fill(p, n * kPageSize, 3);
  EXPECT_EQ(first_mismatch(p, n * kPageSize, 3), SIZE_MAX);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(p);
}

TEST(RangeSnapshot, PerPageRequestsComeThroughTheMask) {
  Context ctx(cpu_options(64 * MiB, false));
  const std::size_t n = 32;
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  std::vector<std::uint64_t> pfns(n);
  for (std::size_t i = 0; i < n; ++i) pfns[i] = i % 2 == 0 ? SNAPSHOT_REQ_POPULATE : 0;
  SnapshotRange r;
  r.start = p;
  r.end = p + n * kPageSize;
  r.pfns = pfns.data();
  r.pfn_flags_mask = SNAPSHOT_REQ_POPULATE;
  ASSERT_TRUE(snapshot_range(ctx, r));
  EXPECT_EQ(r.populated, n / 2);
  const auto pages = ctx.residency(p, n * kPageSize);
  for (std::size_t i = 0; i < n; ++i) {
    EXPECT_EQ(pfns[i], i % 2 == 0 ? SNAPSHOT_PFN_VALID | SNAPSHOT_PFN_WRITE : 0u) << "page " << i;
    EXPECT_EQ(pages[i].residency, i % 2 == 0 ? Residency::System : Residency::Empty) << "page " << i;
  }
  ctx.free(p);
}

TEST(RangeSnapshot, MixedStatesEachReportedAsSuch) {
  Context ctx(cpu_options(64 * MiB, false));
  const OwnerId dev = ctx.device_owner(0);
  const std::size_t n = 12;
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  fill(p, 8 * kPageSize, 4);                          // 0-7 on the host
  ctx.migrate_to_device(p + 4 * kPageSize, 4 * kPageSize, dev);  // 4-7 on the device; 8-11 never touched
  // Pages 0-1 held by a migration in flight.
  std::vector<std::uint64_t> src(2), dst(2);
  MigrateVma held;
  held.start = p;
  held.end = p + 2 * kPageSize;
  held.src = src.data();
  held.dst = dst.data();
  held.flags = MIGRATE_VMA_SELECT_SYSTEM;
  migrate_vma_setup(ctx, held);
  ASSERT_EQ(held.cpages, 2u);

  const auto states = ctx.residency(p, n * kPageSize);
  const auto pfns = snap(ctx, p, n * kPageSize, dev);
  EXPECT_EQ(pfns[0], 0u);  // locked: in transition, not valid
  EXPECT_EQ(pfns[1], 0u);
  EXPECT_EQ(pfns[2], SNAPSHOT_PFN_VALID | SNAPSHOT_PFN_WRITE);
  for (std::size_t i = 4; i < 8; ++i) {
    EXPECT_EQ(pfns[i], SNAPSHOT_PFN_VALID | SNAPSHOT_PFN_WRITE | SNAPSHOT_PFN_DEVICE_PRIVATE | device_bits(states[i].device));
    EXPECT_EQ(snapshot_pfn_to_device_page(pfns[i]), states[i].device);
  }
  for (std::size_t i = 8; i < n; ++i) EXPECT_EQ(pfns[i], 0u);
  // Without an owner, the device's pages are another owner's.
  const auto anon = snap(ctx, p, n * kPageSize);
  EXPECT_EQ(anon[5], SNAPSHOT_PFN_OTHER_DEVICE | device_bits(states[5].device));

  // With POPULATE the locked pages are waited for, not reported invalid.
  std::atomic<bool> done{false};
  std::vector<std::uint64_t> waited;
  std::thread t([&] {
    waited = snap(ctx, p, 2 * kPageSize, dev, SNAPSHOT_REQ_POPULATE);
    done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(done.load());
  migrate_vma_pages(ctx, held);  // no dst: nothing moves
  migrate_vma_finalize(ctx, held);
  t.join();
  EXPECT_EQ(waited[0], SNAPSHOT_PFN_VALID | SNAPSHOT_PFN_WRITE);
  EXPECT_EQ(first_mismatch(p, 4 * kPageSize, 4), SIZE_MAX);
  ctx.free(p);
}

TEST(RangeSnapshot, TwoDevicesTheOtherOwnersPageShowsAsSuch) {
  Context ctx(cpu_options(16 * MiB, false, 2));
  const OwnerId a = ctx.device_owner(0), b = ctx.device_owner(1);
  const std::size_t n = 8;
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  fill(p, n * kPageSize, 5);
  ctx.migrate_to_device(p, 4 * kPageSize, a);
  ctx.migrate_to_device(p + 4 * kPageSize, 4 * kPageSize, b);
  const auto states = ctx.residency(p, n * kPageSize);
  for (int populate = 0; populate < 2; ++populate) {
    // POPULATE leaves device pages where they are: the other owner's too.
    const auto pfns = snap(ctx, p, n * kPageSize, a, populate ? SNAPSHOT_REQ_POPULATE : 0);
    for (std::size_t i = 0; i < 4; ++i)
      EXPECT_EQ(pfns[i], SNAPSHOT_PFN_VALID | SNAPSHOT_PFN_WRITE | SNAPSHOT_PFN_DEVICE_PRIVATE | device_bits(states[i].device));
    for (std::size_t i = 4; i < n; ++i) {
      EXPECT_EQ(pfns[i], SNAPSHOT_PFN_OTHER_DEVICE | device_bits(states[i].device)) << "page " << i;
      EXPECT_EQ(snapshot_pfn_to_device_page(pfns[i]).owner, b);
    }
  }
  // From b's side, the roles swap.
  const auto from_b = snap(ctx, p, n * kPageSize, b);
  EXPECT_EQ(from_b[0] & kState, SNAPSHOT_PFN_OTHER_DEVICE);
  EXPECT_EQ(from_b[7] & kState, SNAPSHOT_PFN_VALID | SNAPSHOT_PFN_WRITE | SNAPSHOT_PFN_DEVICE_PRIVATE);
  EXPECT_EQ(ctx.residency(p, n * kPageSize)[4].residency, Residency::Device);
  ctx.free(p);
}

TEST(RangeSnapshot, HostRequestBringsEveryDevicePageBack) {
  Context ctx(cpu_options(16 * MiB, false, 2));
  const std::size_t n = 700;
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  fill(p, 600 * kPageSize, 6);  // 600-699 never touched
  ctx.migrate_to_device(p, 300 * kPageSize, ctx.device_owner(0));
  ctx.migrate_to_device(p + 300 * kPageSize, 300 * kPageSize, ctx.device_owner(1));
  const Counters before = ctx.counters();
  std::size_t populated = 0;
  const auto pfns = snap(ctx, p, n * kPageSize, ctx.device_owner(0), SNAPSHOT_REQ_HOST, nullptr, &populated);
  for (std::size_t i = 0; i < n; ++i) EXPECT_EQ(pfns[i], SNAPSHOT_PFN_VALID | SNAPSHOT_PFN_WRITE) << "page " << i;
  EXPECT_EQ(populated, 100u);
  EXPECT_EQ(ctx.counters().pages_to_host - before.pages_to_host, 600u);
  EXPECT_EQ(count(ctx.residency(p, n * kPageSize), Residency::System), n);
  const Counters c = ctx.counters();
  EXPECT_EQ(first_mismatch(p, 600 * kPageSize, 6), SIZE_MAX);
  EXPECT_EQ(ctx.counters().faults_from_device, c.faults_from_device);  // already host pages: no fault
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(p);
}

TEST(RangeSnapshot, BadInputIsAClearStatusAndChangesNothing) {
  Context ctx(cpu_options(64 * MiB, false));
  const std::size_t n = 8;
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  auto* q = static_cast<std::byte*>(ctx.allocate(2 * MiB));
  std::vector<std::uint64_t> pfns(n, 0x5a5a);
  std::vector<std::uint64_t> src(n), dst(n);
  alignas(4096) static std::byte unmanaged[kPageSize];
  MigrateVma m;
  m.src = src.data();
  m.dst = dst.data();
  struct Case {
    const char* what;
    Errc code;
    std::function<void(SnapshotRange&)> set;
  };
  const std::vector<Case> cases = {
      {"null pfns", Errc::invalid_argument, [](SnapshotRange& r) { r.pfns = nullptr; }},
      {"zero length", Errc::zero_length, [&](SnapshotRange& r) { r.end = r.start; }},
      {"end before start", Errc::invalid_argument, [&](SnapshotRange& r) { r.end = p - kPageSize; }},
      {"unaligned", Errc::not_aligned, [&](SnapshotRange& r) { r.start = p + 1; }},
      {"outside", Errc::out_of_range, [&](SnapshotRange& r) { r.end = p + (n + 1) * kPageSize; }},
      {"not managed", Errc::out_of_range, [&](SnapshotRange& r) {
         r.start = unmanaged;
         r.end = unmanaged + kPageSize;
       }},
      {"unknown owner", Errc::invalid_argument, [](SnapshotRange& r) { r.owner = 9; }},
      {"unknown flags", Errc::invalid_argument, [](SnapshotRange& r) { r.default_flags = 1u << 3; }},
      {"unknown mask", Errc::invalid_argument, [](SnapshotRange& r) { r.pfn_flags_mask = SNAPSHOT_PFN_VALID; }},
      {"migrate in mask", Errc::invalid_argument, [](SnapshotRange& r) { r.pfn_flags_mask = SNAPSHOT_REQ_MIGRATE; }},
      {"migrate without owner", Errc::invalid_argument, [&](SnapshotRange& r) {
         r.default_flags = SNAPSHOT_REQ_MIGRATE;
         r.migrate = &m;
       }},
      {"migrate without MigrateVma", Errc::invalid_argument, [](SnapshotRange& r) {
         r.default_flags = SNAPSHOT_REQ_MIGRATE;
         r.owner = 1;
       }},
      {"migrate with populate", Errc::invalid_argument, [&](SnapshotRange& r) {
         r.default_flags = SNAPSHOT_REQ_MIGRATE | SNAPSHOT_REQ_POPULATE;
         r.owner = 1;
         r.migrate = &m;
       }},
  };
  fill(p, kPageSize, 7);
  const auto states = ctx.residency(p, n * kPageSize);
  const Counters before = ctx.counters();
  for (const Case& c : cases) {
    SnapshotRange r;
    r.start = p;
    r.end = p + n * kPageSize;
    r.pfns = pfns.data();
    r.default_flags = SNAPSHOT_REQ_POPULATE;
    c.set(r);
    const Status s = snapshot_range(ctx, r);
    EXPECT_EQ(s.code, c.code) << c.what << ": " << s.message;
    EXPECT_NE(s.message.find("snapshot_range"), std::string::npos) << c.what << ": " << s.message;
    for (std::uint64_t w : pfns) EXPECT_EQ(w, 0x5a5au) << c.what;
  }
  // Spanning two ranges.
  SnapshotRange across;
  across.start = p;
  across.end = q + kPageSize;
  across.pfns = pfns.data();
  EXPECT_FALSE(snapshot_range(ctx, across));
  const auto after = ctx.residency(p, n * kPageSize);
  for (std::size_t i = 0; i < n; ++i) EXPECT_EQ(after[i].residency, states[i].residency);
  EXPECT_EQ(ctx.counters().pages_populated, before.pages_populated);
  EXPECT_EQ(ctx.counters().pages_to_device, before.pages_to_device);
  EXPECT_FALSE(m.session);
  EXPECT_THROW(device_pagemap(ctx, 7), Error);
  EXPECT_EQ(device_pagemap(ctx, 1).owner(), 1);
  ctx.free(q);
  ctx.free(p);
}

// One block each of: host pages, never-touched pages, pages on the
// requester, pages on another device; the same layout in two ranges.
std::byte* mixed_range(Context& ctx, std::size_t n, std::uint64_t seed) {
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  for (std::size_t i = 0; i < n; ++i)
    if (i % 5 != 3) fill(p + i * kPageSize, kPageSize, seed + i);  // every fifth page never touched
  ctx.migrate_to_device(p + 40 * kPageSize, 20 * kPageSize, 1);
  ctx.migrate_to_device(p + 80 * kPageSize, 20 * kPageSize, 2);
  return p;
}

TEST(RangeSnapshot, OneWalkLocksExactlyWhatSetupWithFaultWould) {
  Context ctx(cpu_options(64 * MiB, false, 2));
  const std::size_t n = 1024 + 200;  // two whole blocks (compound) and a tail
  auto* a = mixed_range(ctx, n, 100);
  auto* b = mixed_range(ctx, n, 100);
  std::vector<std::uint64_t> src_a(n), dst_a(n), src_b(n), dst_b(n), pfns(n);
  MigrateVma two;  // what a driver would otherwise do: setup with FAULT
  two.start = a;
  two.end = a + n * kPageSize;
  two.src = src_a.data();
  two.dst = dst_a.data();
  two.flags = MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_FAULT | MIGRATE_VMA_SELECT_COMPOUND;
  two.destination = 1;
  migrate_vma_setup(ctx, two);

  MigrateVma one;
  one.src = src_b.data();
  one.dst = dst_b.data();
  one.flags = MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_SELECT_COMPOUND;
  SnapshotRange r;
  r.start = b;
  r.end = b + n * kPageSize;
  r.pfns = pfns.data();
  r.owner = 1;
  r.default_flags = SNAPSHOT_REQ_MIGRATE;
  r.migrate = &one;
  const Counters before = ctx.counters();
  ASSERT_TRUE(snapshot_range(ctx, r));
  EXPECT_EQ(ctx.counters().pages_populated, before.pages_populated);  // populated on the device instead
  EXPECT_EQ(one.cpages, two.cpages);
  EXPECT_EQ(one.flags, two.flags);
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_EQ(src_b[i], src_a[i]) << "page " << i;
    EXPECT_EQ((pfns[i] & SNAPSHOT_PFN_MIGRATE) != 0, (src_b[i] & MIGRATE_PFN_MIGRATE) != 0) << "page " << i;
  }
  // The words report the state each page had: host, never touched, mine, the other's.
  EXPECT_EQ(pfns[0], SNAPSHOT_PFN_VALID | SNAPSHOT_PFN_WRITE | SNAPSHOT_PFN_MIGRATE);
  EXPECT_EQ(pfns[3], SNAPSHOT_PFN_MIGRATE);
  EXPECT_EQ(pfns[40] & kState, SNAPSHOT_PFN_VALID | SNAPSHOT_PFN_WRITE | SNAPSHOT_PFN_DEVICE_PRIVATE);
  EXPECT_EQ(pfns[80] & kState, SNAPSHOT_PFN_OTHER_DEVICE);
  const auto locked_a = ctx.residency(a, n * kPageSize), locked_b = ctx.residency(b, n * kPageSize);
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(locked_a[i].locked, locked_b[i].locked) << "page " << i;

  // Straight to the copy, pages and finalize: the same outcome.
  DevicePagemap& dev = device_pagemap(ctx, 1);
  ASSERT_TRUE(dev.alloc_and_copy(two));
  ASSERT_TRUE(dev.alloc_and_copy(one));
  EXPECT_EQ(migrate_vma_pages(ctx, one), migrate_vma_pages(ctx, two));
  migrate_vma_finalize(ctx, two);
  migrate_vma_finalize(ctx, one);
  const auto end_a = ctx.residency(a, n * kPageSize), end_b = ctx.residency(b, n * kPageSize);
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_EQ(end_a[i].residency, end_b[i].residency) << "page " << i;
    ASSERT_EQ(end_a[i].device.owner, end_b[i].device.owner) << "page " << i;
  }
  EXPECT_EQ(end_b[0].residency, Residency::Device);
  EXPECT_EQ(end_b[3].residency, Residency::Device);
  EXPECT_EQ(end_b[80].device.owner, 2);
  for (std::size_t i = 0; i < n; ++i) {
    if (i % 5 == 3) continue;
    ASSERT_EQ(first_mismatch(a + i * kPageSize, kPageSize, 100 + i), SIZE_MAX) << "page " << i;
    ASSERT_EQ(first_mismatch(b + i * kPageSize, kPageSize, 100 + i), SIZE_MAX) << "page " << i;
  }
  EXPECT_EQ(b[3 * kPageSize], std::byte{0});
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(a);
  ctx.free(b);
}

}  // namespace
}  // namespace uhmm::test
