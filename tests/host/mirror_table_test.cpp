// MirrorEntry and MirrorTable (host/mirror_entry.hpp, host/mirror_table.*):
// the packed 64-bit entry and a range's entries in 2 MiB blocks. Their
// contract: the entry's encoding and move_to's kept bits; the table's block
// geometry (the last block clipped to npages), Empty entries until written,
// touched blocks recorded on every block_mutex() and visited once each in
// ascending order, forget_own_discard(), and validate() naming each kind of
// corrupt entry. Blocks are recorded from many threads at once.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "mirror_entry.hpp"
#include "mirror_table.hpp"

namespace uhmm::test {
namespace {

using detail::MirrorEntry;
using detail::MirrorTable;

std::vector<std::size_t> touched(const MirrorTable& table) {
  std::vector<std::size_t> out;
  table.for_each_touched_block([&](std::size_t block) { out.push_back(block); });
  return out;
}

void put(MirrorTable& table, std::size_t page, MirrorEntry e) {
  std::lock_guard lock(table.block_mutex(MirrorTable::block_of(page)));
  table.entry(page) = e;
}

MirrorEntry get(MirrorTable& table, std::size_t page) {
  std::lock_guard lock(table.block_mutex(MirrorTable::block_of(page)));
  return table.entry(page);
}

TEST(MirrorEntry, ANewEntryIsEmptyAndUnlocked) {
  const MirrorEntry e;
  EXPECT_EQ(e.residency(), Residency::Empty);
  EXPECT_FALSE(e.locked());
  EXPECT_EQ(e.device_page().owner, kNoOwner);
  EXPECT_EQ(e.bits(), 0u);
}

TEST(MirrorEntry, DevicePagesRoundTripAtTheEdgesOfTheirFields) {
  for (const DevicePage page : {DevicePage{1, 0}, DevicePage{255, 0xffff'ffffu}, DevicePage{7, 123456}}) {
    const MirrorEntry d = MirrorEntry::device(page);
    EXPECT_EQ(d.residency(), Residency::Device);
    EXPECT_TRUE(d.has(MirrorEntry::kWrite));
    EXPECT_EQ(d.device_page().owner, page.owner);
    EXPECT_EQ(d.device_page().index, page.index);
    const MirrorEntry dup = MirrorEntry::duplicated(page);
    EXPECT_EQ(dup.residency(), Residency::Duplicated);
    EXPECT_FALSE(dup.has(MirrorEntry::kWrite));  // read-only on both sides
    EXPECT_EQ(dup.device_page().owner, page.owner);
    EXPECT_EQ(dup.device_page().index, page.index);
  }
  const MirrorEntry s = MirrorEntry::system();
  EXPECT_EQ(s.residency(), Residency::System);
  EXPECT_TRUE(s.has(MirrorEntry::kWrite));
  EXPECT_EQ(s.device_page().owner, kNoOwner);
}

TEST(MirrorEntry, FlagsSetAndClearOneAtATime) {
  MirrorEntry e = MirrorEntry::device({3, 9});
  for (std::uint64_t flag : {MirrorEntry::kLocked, MirrorEntry::kPinned, MirrorEntry::kDirty,
                             MirrorEntry::kPoisoned, MirrorEntry::kDiscarded, MirrorEntry::kFreed}) {
    e.set(flag);
    EXPECT_TRUE(e.has(flag));
    e.clear(flag);
    EXPECT_FALSE(e.has(flag));
    EXPECT_EQ(e.bits(), MirrorEntry::device({3, 9}).bits());
  }
}

TEST(MirrorEntry, MoveToKeepsPinnedLockedAndDiscardedOnly) {
  MirrorEntry e = MirrorEntry::system();
  e.set(MirrorEntry::kPinned);
  e.set(MirrorEntry::kLocked);
  e.set(MirrorEntry::kDiscarded);
  e.set(MirrorEntry::kFreed);     // named the old home
  e.set(MirrorEntry::kPoisoned);  // so did this
  e.move_to(MirrorEntry::device({2, 42}));
  EXPECT_EQ(e.residency(), Residency::Device);
  EXPECT_EQ(e.device_page().owner, 2);
  EXPECT_EQ(e.device_page().index, 42u);
  EXPECT_TRUE(e.has(MirrorEntry::kPinned));
  EXPECT_TRUE(e.locked());
  EXPECT_TRUE(e.has(MirrorEntry::kDiscarded));
  EXPECT_FALSE(e.has(MirrorEntry::kFreed));
  EXPECT_FALSE(e.has(MirrorEntry::kPoisoned));
  e.move_to(MirrorEntry::system());  // back: the device page goes with the old home
  EXPECT_EQ(e.device_page().owner, kNoOwner);
  EXPECT_EQ(e.device_page().index, 0u);
}

TEST(MirrorTable, BlocksAre512PagesAndTheLastIsClippedToTheRange) {
  MirrorTable table(kPagesPerBlock * 2 + 3);
  EXPECT_EQ(table.npages(), kPagesPerBlock * 2 + 3);
  EXPECT_EQ(table.nblocks(), 3u);
  EXPECT_EQ(MirrorTable::block_of(kPagesPerBlock - 1), 0u);
  EXPECT_EQ(MirrorTable::block_of(kPagesPerBlock), 1u);
  EXPECT_EQ(table.block_begin(1), kPagesPerBlock);
  EXPECT_EQ(table.block_end(1), 2 * kPagesPerBlock);
  EXPECT_EQ(table.block_begin(2), 2 * kPagesPerBlock);
  EXPECT_EQ(table.block_end(2), 2 * kPagesPerBlock + 3);

  MirrorTable exact(kPagesPerBlock);
  EXPECT_EQ(exact.nblocks(), 1u);
  EXPECT_EQ(exact.block_end(0), kPagesPerBlock);
  MirrorTable one(1);
  EXPECT_EQ(one.nblocks(), 1u);
  EXPECT_EQ(one.block_end(0), 1u);
}

TEST(MirrorTable, AnEmptyTableHasNoBlocksAndValidates) {
  MirrorTable table(0);
  EXPECT_EQ(table.nblocks(), 0u);
  EXPECT_EQ(table.touched_blocks(), 0u);
  EXPECT_TRUE(touched(table).empty());
  EXPECT_EQ(table.resident_entry_pages(), 0u);
  EXPECT_TRUE(table.validate());
}

TEST(MirrorTable, EntriesStartEmptyAndNoBlockIsTouched) {
  MirrorTable table(kPagesPerBlock * 4);
  EXPECT_EQ(table.touched_blocks(), 0u);
  EXPECT_TRUE(table.validate());
  EXPECT_EQ(table.resident_entry_pages(), 0u);  // nothing read or written yet
  for (std::size_t page : {std::size_t{0}, kPagesPerBlock - 1, kPagesPerBlock, kPagesPerBlock * 4 - 1})
    EXPECT_EQ(get(table, page).bits(), 0u);
  EXPECT_EQ(touched(table), (std::vector<std::size_t>{0, 1, 3}));
}

TEST(MirrorTable, TouchedBlocksAreVisitedOnceEachInAscendingOrderAcrossSummaryWords) {
  // 10000 blocks: touched_ spans 157 words, summary_ 3 (one per 4096 blocks).
  constexpr std::size_t kBlocks = 10000;
  MirrorTable table(kBlocks * kPagesPerBlock);
  const std::vector<std::size_t> blocks = {9999, 4096, 0, 63, 64, 4095, 127, 8191, 8192, 64};
  for (std::size_t b : blocks) std::lock_guard lock(table.block_mutex(b));
  std::vector<std::size_t> expected = blocks;
  std::sort(expected.begin(), expected.end());
  expected.erase(std::unique(expected.begin(), expected.end()), expected.end());
  EXPECT_EQ(touched(table), expected);
  EXPECT_EQ(table.touched_blocks(), expected.size());
}

TEST(MirrorTable, OnlyTouchedBlocksCostEntryMemory) {
  constexpr std::size_t kBlocks = 4096;  // 8 GiB of range, 16 MiB of entries
  MirrorTable table(kBlocks * kPagesPerBlock);
  put(table, 5, MirrorEntry::system());
  put(table, (kBlocks - 1) * kPagesPerBlock, MirrorEntry::system());
  EXPECT_TRUE(table.validate());  // reads the two touched blocks alone
  EXPECT_EQ(table.touched_blocks(), 2u);
  EXPECT_LE(table.resident_entry_pages(), 2u);
}

TEST(MirrorTable, ForgetOwnDiscardClearsDiscardedAlone) {
  MirrorTable table(kPagesPerBlock + 1);
  const std::size_t page = kPagesPerBlock;  // first page of the last block
  MirrorEntry e = MirrorEntry::device({1, 77});
  e.set(MirrorEntry::kLocked);
  e.set(MirrorEntry::kDiscarded);
  e.set(MirrorEntry::kDirty);
  put(table, page, e);
  table.forget_own_discard(page);
  MirrorEntry expected = MirrorEntry::device({1, 77});
  expected.set(MirrorEntry::kLocked);
  expected.set(MirrorEntry::kDirty);
  EXPECT_EQ(get(table, page).bits(), expected.bits());
  EXPECT_EQ(get(table, page - 1).bits(), 0u);
}

TEST(MirrorTable, ValidateAcceptsEveryWellFormedEntry) {
  MirrorTable table(kPagesPerBlock * 2);
  MirrorEntry locked_discard = MirrorEntry::system();
  locked_discard.set(MirrorEntry::kLocked);
  locked_discard.set(MirrorEntry::kDiscarded);
  MirrorEntry freed = MirrorEntry::system();
  freed.set(MirrorEntry::kFreed);
  MirrorEntry flagged = MirrorEntry::device({4, 1});
  for (std::uint64_t f : {MirrorEntry::kPinned, MirrorEntry::kDirty, MirrorEntry::kLocked}) flagged.set(f);
  const MirrorEntry good[] = {MirrorEntry{}, MirrorEntry::system(), MirrorEntry::device({1, 0}),
                              MirrorEntry::duplicated({255, 0xffff'ffffu}), locked_discard, freed, flagged};
  std::size_t page = kPagesPerBlock - 3;  // across the block boundary
  for (const MirrorEntry& e : good) put(table, page++, e);
  EXPECT_TRUE(table.validate()) << table.validate().message;
}

TEST(MirrorTable, ValidateNamesEachKindOfCorruptEntry) {
  MirrorEntry discarded_unlocked = MirrorEntry::system();
  discarded_unlocked.set(MirrorEntry::kDiscarded);
  MirrorEntry freed_device = MirrorEntry::device({1, 3});
  freed_device.set(MirrorEntry::kFreed);
  const std::uint64_t device_residency = MirrorEntry::device({1, 0}).bits() & 3;
  const MirrorEntry corrupt[] = {
      MirrorEntry(device_residency),                           // on a device, no owner
      MirrorEntry(MirrorEntry::system().bits() | (1u << 8)),   // on the host, with an owner
      MirrorEntry(MirrorEntry::system().bits() | (std::uint64_t{5} << 32)),  // host, device index
      MirrorEntry(MirrorEntry::system().bits() | (1u << 17)),  // an unknown bit
      MirrorEntry(MirrorEntry::system().bits() | (1u << 31)),  // another
      discarded_unlocked,
      freed_device,
  };
  for (const MirrorEntry& bad : corrupt) {
    MirrorTable table(kPagesPerBlock * 2);
    const std::size_t page = kPagesPerBlock + 17;
    put(table, page - 1, MirrorEntry::system());
    put(table, page, bad);
    const Status s = table.validate();
    EXPECT_FALSE(s) << std::hex << bad.bits();
    EXPECT_NE(s.message.find("mirror entry 529 is corrupt"), std::string::npos) << s.message;
  }
}

TEST(MirrorTable, BlocksTouchedFromManyThreadsAreAllRecorded) {
  // Threads record blocks at once (mark_touched is lock-free: fetch_or on
  // shared words), some blocks by several threads; each writes its own pages.
  constexpr std::size_t kBlocks = 4096 + 130;
  constexpr unsigned kThreads = 4;
  MirrorTable table(kBlocks * kPagesPerBlock);
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < kThreads; ++t)
    threads.emplace_back([&table, t] {
      for (std::size_t b = t; b < kBlocks; b += 3) {
        std::lock_guard lock(table.block_mutex(b));
        table.entry(table.block_begin(b) + t) = MirrorEntry::system();
      }
    });
  for (auto& th : threads) th.join();
  std::vector<std::size_t> expected(kBlocks);  // every block, by one thread or two
  for (std::size_t b = 0; b < kBlocks; ++b) expected[b] = b;
  EXPECT_EQ(touched(table), expected);
  EXPECT_TRUE(table.validate());
  for (unsigned t = 0; t < kThreads; ++t)
    EXPECT_EQ(get(table, table.block_begin(t + 3 * 100) + t).residency(), Residency::System);
}

}  // namespace
}  // namespace uhmm::test
