// Backups (server/backup/): an online backup under a write load restores to
// exactly the writes before its cut; verify catches damage; restore refuses
// a directory that is not empty; list, retention, cancellation; the cron
// schedule; the manager's requests and status.
#include "server/backup/backup.h"

#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "server/backup/backup_manager.h"
#include "server/backup/cron.h"
#include "tests/engine/test_util.h"

namespace logkv::server::backup {
namespace {

namespace fs = std::filesystem;
using test::ScopedTempDir;

std::unique_ptr<engine::Engine> OpenEngine(const std::string& dir, uint32_t versions_kept = 3) {
  engine::Options options = test::TestOptions(dir);
  options.versions_kept = versions_kept;
  auto engine = engine::Engine::Open(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

// What a writer did, in order, with where the engine put it.
struct Op {
  uint32_t shard;
  uint64_t sequence;
  std::string key;
  bool put;
  std::string value;
  uint64_t version;
  int64_t expiry_unix_ms;
};

struct ModelValue {
  bool present = false;
  std::string value;
  uint64_t version = 0;
  int64_t expiry_unix_ms = 0;
  std::map<uint64_t, std::string> versions;  // since the last delete
};

void FlipByte(const std::string& path, uint64_t offset) {
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(file.is_open()) << path;
  file.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  file.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  file.seekp(static_cast<std::streamoff>(offset));
  file.write(&c, 1);
}

class BackupFormatTest : public ::testing::TestWithParam<BackupFormat> {};

TEST_P(BackupFormatTest, BackupUnderWriteLoadRestoresExactlyTheCut) {
  ScopedTempDir dir;
  const std::string data = dir.Subdir("data");
  std::unique_ptr<engine::Engine> engine = OpenEngine(data);
  ASSERT_NE(engine, nullptr);
  test::Random random(test::TestSeed());
  // Some data before the backup starts, so that it has sealed segments.
  std::vector<Op> ops;
  absl::Mutex ops_mu;
  auto write_one = [&](test::Random& r) {
    const std::string key = absl::StrCat("key-", r.Uniform(400));
    if (r.Percent(12)) {
      auto deleted = engine->Delete(key);
      if (!deleted.ok()) return;  // absent
      absl::MutexLock lock(&ops_mu);
      ops.push_back(Op{deleted->shard, deleted->sequence, key, false, "", deleted->version, 0});
      return;
    }
    engine::WriteOptions options;
    if (r.Percent(30)) options.ttl_ms = 3'600'000 + static_cast<int64_t>(r.Uniform(1000));
    const std::string value = r.Bytes(20 + r.Uniform(300));
    auto put = engine->Put(key, value, options);
    ASSERT_TRUE(put.ok()) << put.status();
    auto record = engine->GetRecord(key, false);
    absl::MutexLock lock(&ops_mu);
    ops.push_back(Op{put->shard, put->sequence, key, true, value, put->version,
                     options.ttl_ms == 0 ? 0 : record->expiry_unix_ms});
  };
  for (int i = 0; i < 3000; ++i) write_one(random);

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> written_during{0};
  std::thread writer([&] {
    test::Random r(random.Next());
    while (!stop.load()) {
      write_one(r);
      written_during.fetch_add(1);
    }
  });
  // Compaction removes and rewrites segments while the copy reads them.
  std::thread compactor([&] {
    while (!stop.load()) {
      (void)engine->CompactNow(/*force=*/true);
      absl::SleepFor(absl::Milliseconds(20));
    }
  });

  CreateOptions create;
  create.dir = dir.Subdir("backups");
  create.format = GetParam();
  create.node_id = "node-a";
  create.bytes_per_second = 4 << 20;  // long enough for writes to overlap it
  // Make sure writes overlap the copy: wait for some before it starts.
  while (written_during.load() < 200) absl::SleepFor(absl::Milliseconds(1));
  absl::StatusOr<CreatedBackup> created = CreateBackup(engine.get(), create);
  const uint64_t written_before_end = written_during.load();
  while (written_during.load() < written_before_end + 200) absl::SleepFor(absl::Milliseconds(1));
  stop.store(true);
  writer.join();
  compactor.join();
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->manifest.node_id, "node-a");
  EXPECT_TRUE(fs::exists(created->path));
  EXPECT_FALSE(fs::exists(created->path + kTemporarySuffix));

  ASSERT_TRUE(VerifyBackup(created->path).ok());
  const std::string restored_dir = dir.Subdir("restored");
  absl::StatusOr<BackupManifest> restored = RestoreBackup(created->path, restored_dir);
  ASSERT_TRUE(restored.ok()) << restored.status();
  const std::vector<uint64_t>& cut = restored->shard_sequences;
  ASSERT_EQ(cut.size(), engine->ShardCount());

  // The model: every write at or before its shard's cut, in order.
  std::map<std::string, ModelValue> model;
  size_t after_cut = 0;
  std::sort(ops.begin(), ops.end(), [](const Op& a, const Op& b) {
    return a.shard != b.shard ? a.shard < b.shard : a.sequence < b.sequence;
  });
  for (const Op& op : ops) {
    if (op.sequence > cut[op.shard]) {
      ++after_cut;
      continue;
    }
    ModelValue& value = model[op.key];
    if (op.put) {
      value.present = true;
      value.value = op.value;
      value.version = op.version;
      value.expiry_unix_ms = op.expiry_unix_ms;
      value.versions[op.version] = op.value;
    } else {
      value = ModelValue{};
    }
  }
  EXPECT_GT(after_cut, 0u) << "no write came after the cut: the test did not overlap";

  engine.reset();  // the original closes; only the restored copy is read now
  std::unique_ptr<engine::Engine> copy = OpenEngine(restored_dir);
  ASSERT_NE(copy, nullptr);
  size_t live = 0;
  for (const auto& [key, expected] : model) {
    SCOPED_TRACE(key);
    std::string value;
    engine::ValueMeta meta;
    absl::Status status = copy->Get(key, &value, &meta);
    if (!expected.present) {
      EXPECT_TRUE(absl::IsNotFound(status)) << status;
      continue;
    }
    ++live;
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_EQ(value, expected.value);
    EXPECT_EQ(meta.version, expected.version);
    EXPECT_EQ(meta.expiry_unix_ms, expected.expiry_unix_ms);
    if (expected.version > 1 && expected.versions.contains(expected.version - 1)) {
      auto older = copy->GetVersion(key, expected.version - 1);
      ASSERT_TRUE(older.ok()) << older.status();
      EXPECT_EQ(older->value, expected.versions.at(expected.version - 1));
    }
  }
  EXPECT_EQ(copy->GetStats().keys, live);
}

INSTANTIATE_TEST_SUITE_P(Formats, BackupFormatTest,
                         ::testing::Values(BackupFormat::kArchive, BackupFormat::kDirectory),
                         [](const auto& info) { return std::string(BackupFormatName(info.param)); });

absl::StatusOr<CreatedBackup> SmallBackup(const ScopedTempDir& dir, BackupFormat format,
                                          const std::string& name = "") {
  const std::string data = dir.Subdir(absl::StrCat("data-", name));
  std::unique_ptr<engine::Engine> engine = OpenEngine(data);
  if (engine == nullptr) return absl::InternalError("no engine");
  for (int i = 0; i < 2000; ++i) {
    if (auto put = engine->Put(absl::StrCat("k", i), std::string(100, 'a' + i % 26)); !put.ok()) {
      return put.status();
    }
  }
  CreateOptions create;
  create.dir = dir.Subdir("backups");
  create.format = format;
  create.name = name;
  return CreateBackup(engine.get(), create);
}

TEST_P(BackupFormatTest, VerifyDetectsAFlippedByte) {
  ScopedTempDir dir;
  absl::StatusOr<CreatedBackup> created = SmallBackup(dir, GetParam());
  ASSERT_TRUE(created.ok()) << created.status();
  ASSERT_TRUE(VerifyBackup(created->path).ok());
  std::string victim = created->path;
  if (GetParam() == BackupFormat::kDirectory) {
    victim = absl::StrCat(created->path, "/shard-000/000000000001.log");
  }
  FlipByte(victim, fs::file_size(victim) / 2);
  absl::StatusOr<BackupManifest> verified = VerifyBackup(created->path);
  EXPECT_TRUE(absl::IsDataLoss(verified.status())) << verified.status();
  // A restore of it refuses as well, and leaves the target empty.
  const std::string target = dir.Subdir("target");
  EXPECT_FALSE(RestoreBackup(created->path, target).ok());
  EXPECT_TRUE(fs::is_empty(target));
}

TEST_P(BackupFormatTest, VerifyDetectsADamagedManifestAndMissingOrExtraFiles) {
  ScopedTempDir dir;
  absl::StatusOr<CreatedBackup> created = SmallBackup(dir, GetParam());
  ASSERT_TRUE(created.ok()) << created.status();
  if (GetParam() == BackupFormat::kArchive) {
    // Cut short: the manifest (last) is gone.
    fs::resize_file(created->path, fs::file_size(created->path) / 2);
    EXPECT_TRUE(absl::IsDataLoss(VerifyBackup(created->path).status()));
    return;
  }
  const std::string manifest = absl::StrCat(created->path, "/", kManifestFileName);
  std::string text = test::ReadFileBytes(manifest);
  const size_t at = text.find("\"node_id\"");
  ASSERT_NE(at, std::string::npos);
  std::string damaged = text;
  damaged.replace(at, 9, "\"node_iX\"");
  test::WriteFileBytes(manifest, damaged);
  EXPECT_TRUE(absl::IsDataLoss(VerifyBackup(created->path).status()));
  test::WriteFileBytes(manifest, text);
  ASSERT_TRUE(VerifyBackup(created->path).ok());
  test::WriteFileBytes(absl::StrCat(created->path, "/shard-000/extra"), "x");
  EXPECT_TRUE(absl::IsDataLoss(VerifyBackup(created->path).status()));
  fs::remove(absl::StrCat(created->path, "/shard-000/extra"));
  fs::remove(absl::StrCat(created->path, "/MANIFEST"));
  EXPECT_TRUE(absl::IsDataLoss(VerifyBackup(created->path).status()));
}

TEST_P(BackupFormatTest, RestoreRefusesANonEmptyDirectory) {
  ScopedTempDir dir;
  absl::StatusOr<CreatedBackup> created = SmallBackup(dir, GetParam());
  ASSERT_TRUE(created.ok()) << created.status();
  const std::string target = dir.Subdir("target");
  fs::create_directories(target);
  test::WriteFileBytes(target + "/something", "mine");
  absl::StatusOr<BackupManifest> restored = RestoreBackup(created->path, target);
  EXPECT_TRUE(absl::IsFailedPrecondition(restored.status())) << restored.status();
  EXPECT_EQ(test::ReadFileBytes(target + "/something"), "mine");
  // An empty directory (a mount point, say) is fine, and so is a new one.
  fs::remove(target + "/something");
  EXPECT_TRUE(RestoreBackup(created->path, target).ok());
  EXPECT_TRUE(RestoreBackup(created->path, dir.Subdir("new/nested")).ok());
  std::unique_ptr<engine::Engine> copy = OpenEngine(target);
  ASSERT_NE(copy, nullptr);
  EXPECT_EQ(copy->GetStats().keys, 2000u);
}

// Every file and directory under root, root included, is open to its
// owner alone.
void ExpectTheOwnersAlone(const std::string& root) {
  constexpr fs::perms kOthers = fs::perms::group_all | fs::perms::others_all;
  EXPECT_EQ(fs::status(root).permissions() & kOthers, fs::perms::none) << root;
  for (const fs::directory_entry& entry : fs::recursive_directory_iterator(root)) {
    EXPECT_EQ(fs::symlink_status(entry.path()).permissions() & kOthers, fs::perms::none)
        << entry.path();
  }
}

// A backup holds every tenant's data and, a node's, the accounts' secrets
// (the control state's snapshot): the backup, a restore of it and the
// engine's own files are the owner's alone, whatever the umask.
TEST_P(BackupFormatTest, BackupsRestoresAndDataAreTheOwnersAlone) {
  ScopedTempDir dir;
  const mode_t umask_before = ::umask(0);
  absl::StatusOr<CreatedBackup> created = SmallBackup(dir, GetParam());
  ASSERT_TRUE(created.ok()) << created.status();
  const std::string restored = dir.Subdir("restored");
  absl::StatusOr<BackupManifest> manifest = RestoreBackup(created->path, restored + "/nested");
  ::umask(umask_before);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  ExpectTheOwnersAlone(dir.Subdir("data-"));
  ExpectTheOwnersAlone(dir.Subdir("backups"));
  ExpectTheOwnersAlone(restored);
}

TEST_P(BackupFormatTest, CancelledBackupLeavesNothing) {
  ScopedTempDir dir;
  std::unique_ptr<engine::Engine> engine = OpenEngine(dir.Subdir("data"));
  ASSERT_NE(engine, nullptr);
  for (int i = 0; i < 3000; ++i) ASSERT_TRUE(engine->Put(absl::StrCat("k", i), "value").ok());
  std::atomic<bool> cancel{false};
  CreateOptions create;
  create.dir = dir.Subdir("backups");
  create.format = GetParam();
  create.cancel = &cancel;
  create.progress = [&cancel](uint64_t done, uint64_t total) {
    if (done * 2 > total) cancel.store(true);
  };
  create.bytes_per_second = 0;
  absl::StatusOr<CreatedBackup> created = CreateBackup(engine.get(), create);
  EXPECT_TRUE(absl::IsCancelled(created.status())) << created.status();
  EXPECT_TRUE(fs::is_empty(create.dir));
}


// A manifest larger than 64 MiB is refused from the archive's header,
// before any of it is inflated or held: an archive of some kilobytes can
// inflate to gigabytes (one of 36 KB held 4 GB in verify, list and a
// node's retention pass).
TEST(BackupTest, AnOversizedManifestIsRefusedUnread) {
  ScopedTempDir dir;
  const std::string backups = dir.Subdir("backups");
  fs::create_directories(backups);
  const std::string path = absl::StrCat(backups, "/", kNamePrefix, "huge", kArchiveSuffix);
  {
    archive* out = archive_write_new();
    ASSERT_EQ(archive_write_set_format_pax_restricted(out), ARCHIVE_OK);
    ASSERT_EQ(archive_write_add_filter_zstd(out), ARCHIVE_OK);
    ASSERT_EQ(archive_write_open_filename(out, path.c_str()), ARCHIVE_OK);
    archive_entry* entry = archive_entry_new();
    archive_entry_set_pathname(entry, kManifestFileName);
    archive_entry_set_size(entry, (64 << 20) + 1);
    archive_entry_set_filetype(entry, AE_IFREG);
    archive_entry_set_perm(entry, 0600);
    ASSERT_EQ(archive_write_header(out, entry), ARCHIVE_OK);
    const std::string spaces(1 << 20, ' ');
    for (int i = 0; i <= 64; ++i) {
      const size_t bytes = i < 64 ? spaces.size() : 1;
      ASSERT_EQ(archive_write_data(out, spaces.data(), bytes), static_cast<la_ssize_t>(bytes));
    }
    archive_entry_free(entry);
    ASSERT_EQ(archive_write_close(out), ARCHIVE_OK);
    archive_write_free(out);
  }
  ASSERT_LT(fs::file_size(path), 1u << 20);
  absl::StatusOr<BackupManifest> verified = VerifyBackup(path);
  EXPECT_TRUE(absl::IsDataLoss(verified.status())) << verified.status();
  EXPECT_TRUE(absl::StrContains(verified.status().message(), "more than a manifest may be"))
      << verified.status();
  absl::StatusOr<BackupManifest> restored = RestoreBackup(path, dir.Subdir("target"));
  EXPECT_TRUE(absl::IsDataLoss(restored.status())) << restored.status();
  absl::StatusOr<std::vector<ListedBackup>> listed = ListBackups(backups);
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_FALSE((*listed)[0].complete);
  EXPECT_TRUE(absl::StrContains((*listed)[0].error, "more than a manifest may be"))
      << (*listed)[0].error;
}

TEST(BackupTest, HardLinkedDirectoryBackupSharesSealedSegments) {
  ScopedTempDir dir;
  const std::string data = dir.Subdir("data");
  std::unique_ptr<engine::Engine> engine = OpenEngine(data);
  ASSERT_NE(engine, nullptr);
  for (int i = 0; i < 3000; ++i) {
    ASSERT_TRUE(engine->Put(absl::StrCat("k", i), std::string(100, 'a' + i % 26)).ok());
  }
  CreateOptions create;
  create.dir = dir.Subdir("backups");
  create.format = BackupFormat::kArchive;
  create.hard_links = true;
  EXPECT_TRUE(absl::IsInvalidArgument(CreateBackup(engine.get(), create).status()));
  create.format = BackupFormat::kDirectory;
  absl::StatusOr<CreatedBackup> created = CreateBackup(engine.get(), create);
  ASSERT_TRUE(created.ok()) << created.status();
  size_t linked = 0;
  size_t copied = 0;
  for (const auto& entry : fs::recursive_directory_iterator(created->path)) {
    if (entry.path().extension() != ".log") continue;
    (fs::hard_link_count(entry.path()) > 1 ? linked : copied) += 1;
  }
  EXPECT_GT(linked, 0u);   // the sealed segments
  EXPECT_EQ(copied, engine->ShardCount());  // each shard's active segment
  // Compaction removes the live files; the backup keeps its links.
  ASSERT_TRUE(engine->CompactNow(/*force=*/true).ok());
  ASSERT_TRUE(VerifyBackup(created->path).ok());
  const std::string restored = dir.Subdir("restored");
  ASSERT_TRUE(RestoreBackup(created->path, restored).ok());
  engine.reset();
  std::unique_ptr<engine::Engine> copy = OpenEngine(restored);
  ASSERT_NE(copy, nullptr);
  EXPECT_EQ(copy->GetStats().keys, 3000u);
  EXPECT_EQ(test::GetOrStatus(copy.get(), "k7"), std::string(100, 'h'));
}

TEST(BackupTest, ListRetentionAndLeftovers) {
  ScopedTempDir dir;
  std::unique_ptr<engine::Engine> engine = OpenEngine(dir.Subdir("data"));
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(engine->Put("k", "v").ok());
  CreateOptions create;
  create.dir = dir.Subdir("backups");
  for (int i = 0; i < 3; ++i) {
    create.name = absl::StrCat(kNamePrefix, i);
    create.format = i == 1 ? BackupFormat::kDirectory : BackupFormat::kArchive;
    ASSERT_TRUE(CreateBackup(engine.get(), create).ok());
    absl::SleepFor(absl::Milliseconds(2));  // distinct creation times
  }
  // A backup cut short by a kill: a temporary name, never complete.
  fs::create_directories(absl::StrCat(create.dir, "/", kNamePrefix, "9", kTemporarySuffix));
  absl::StatusOr<std::vector<ListedBackup>> listed = ListBackups(create.dir);
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 4u);
  EXPECT_TRUE((*listed)[0].complete);
  EXPECT_EQ((*listed)[1].format, BackupFormat::kDirectory);
  EXPECT_FALSE((*listed)[3].complete);
  EXPECT_NE((*listed)[3].error.find("incomplete"), std::string::npos);
  EXPECT_FALSE(VerifyBackup((*listed)[3].path).ok());

  absl::StatusOr<std::vector<std::string>> pruned = PruneBackups(create.dir, 2);
  ASSERT_TRUE(pruned.ok()) << pruned.status();
  ASSERT_EQ(pruned->size(), 1u);
  EXPECT_NE((*pruned)[0].find(absl::StrCat(kNamePrefix, "0")), std::string::npos);
  absl::StatusOr<std::vector<std::string>> leftovers = RemoveIncompleteBackups(create.dir);
  ASSERT_TRUE(leftovers.ok());
  EXPECT_EQ(leftovers->size(), 1u);
  listed = ListBackups(create.dir);
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 2u);
  // A name outside the backups' namespace is refused.
  create.name = "../escape";
  EXPECT_TRUE(absl::IsInvalidArgument(CreateBackup(engine.get(), create).status()));
}

// ---- The schedule ------------------------------------------------------------

absl::Time Utc(int y, int mo, int d, int h, int mi) {
  return absl::FromCivil(absl::CivilMinute(y, mo, d, h, mi), absl::UTCTimeZone());
}

absl::Time NextOf(absl::string_view text, absl::Time after) {
  absl::StatusOr<CronSchedule> schedule = CronSchedule::Parse(text);
  EXPECT_TRUE(schedule.ok()) << text << ": " << schedule.status();
  return schedule.ok() ? schedule->Next(after) : absl::InfinitePast();
}

TEST(CronScheduleTest, NextRuns) {
  const absl::Time t = Utc(2026, 12, 2, 10, 7);  // a Wednesday
  EXPECT_EQ(NextOf("* * * * *", t), Utc(2026, 12, 2, 10, 8));
  EXPECT_EQ(NextOf("*/15 * * * *", t), Utc(2026, 12, 2, 10, 15));
  EXPECT_EQ(NextOf("5/15 * * * *", t), Utc(2026, 12, 2, 10, 20));
  EXPECT_EQ(NextOf("0 3 * * *", t), Utc(2026, 12, 3, 3, 0));
  EXPECT_EQ(NextOf("0 3 * * *", Utc(2026, 12, 3, 3, 0)), Utc(2026, 12, 4, 3, 0));
  EXPECT_EQ(NextOf("30 1,13 * * *", t), Utc(2026, 12, 2, 13, 30));
  EXPECT_EQ(NextOf("0 9-17/4 * * *", t), Utc(2026, 12, 2, 13, 0));
  EXPECT_EQ(NextOf("0 0 1 1 *", t), Utc(2027, 1, 1, 0, 0));
  EXPECT_EQ(NextOf("0 12 * * 1", t), Utc(2026, 12, 7, 12, 0));  // Monday
  EXPECT_EQ(NextOf("0 12 * * 0", t), Utc(2026, 12, 6, 12, 0));  // Sunday
  EXPECT_EQ(NextOf("0 12 * * 7", t), Utc(2026, 12, 6, 12, 0));  // Sunday again
  EXPECT_EQ(NextOf("0 0 * * 1-5", Utc(2026, 12, 4, 12, 0)), Utc(2026, 12, 7, 0, 0));
  // Both day fields restricted: either matches (the 13th, or a Friday).
  EXPECT_EQ(NextOf("0 0 13 * 5", t), Utc(2026, 12, 4, 0, 0));
  EXPECT_EQ(NextOf("0 0 13 * 5", Utc(2026, 12, 11, 0, 0)), Utc(2026, 12, 13, 0, 0));
  // One restricted: only it counts.
  EXPECT_EQ(NextOf("0 0 13 * *", t), Utc(2026, 12, 13, 0, 0));
  EXPECT_EQ(NextOf("0 0 29 2 *", t), Utc(2028, 2, 29, 0, 0));
  EXPECT_EQ(NextOf("0 0 31 2 *", t), absl::InfiniteFuture());
  EXPECT_EQ(NextOf("  0   4  *  * *  ", t), Utc(2026, 12, 3, 4, 0));
  // Seconds are ignored: the next whole minute strictly after.
  EXPECT_EQ(NextOf("* * * * *", t + absl::Seconds(59)), Utc(2026, 12, 2, 10, 8));
}

TEST(CronScheduleTest, RefusesWhatIsNotCron) {
  for (const char* text :
       {"", "* * * *", "* * * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * 32 * *",
        "* * * 0 *", "* * * 13 *", "* * * * 8", "a * * * *", "*/0 * * * *", "5-3 * * * *",
        ", * * * *", "1,,2 * * * *", "-1 * * * *", "1- * * * *", "*/ * * * *", "@daily",
        "0 0 * JAN *", "0 0 * * MON", "100 * * * *"}) {
    SCOPED_TRACE(text);
    EXPECT_TRUE(absl::IsInvalidArgument(CronSchedule::Parse(text).status()));
  }
}

TEST(CronScheduleTest, ErrorsNameTheField) {
  absl::StatusOr<CronSchedule> schedule = CronSchedule::Parse("0 25 * * *");
  ASSERT_FALSE(schedule.ok());
  EXPECT_NE(schedule.status().message().find("hour"), absl::string_view::npos)
      << schedule.status();
}

// ---- The manager ---------------------------------------------------------------

TEST(BackupManagerTest, RequestsStatusAndRetention) {
  ScopedTempDir dir;
  std::unique_ptr<engine::Engine> engine = OpenEngine(dir.Subdir("data"));
  ASSERT_NE(engine, nullptr);
  for (int i = 0; i < 500; ++i) ASSERT_TRUE(engine->Put(absl::StrCat("k", i), "value").ok());

  BackupManager off(engine.get(), BackupManagerOptions{});
  ASSERT_TRUE(off.Start().ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(off.RequestBackup().status()));
  EXPECT_FALSE(off.Status().enabled);
  off.Stop();

  BackupManagerOptions options;
  options.dir = dir.Subdir("backups");
  options.retention = 2;
  options.schedule = "0 0 1 1 *";
  options.node_id = "n1";
  fs::create_directories(absl::StrCat(options.dir, "/", kNamePrefix, "x", kTemporarySuffix));
  BackupManager manager(engine.get(), options);
  // Before its start a request is told the node is starting, not stopping.
  absl::StatusOr<std::string> early = manager.RequestBackup();
  EXPECT_TRUE(absl::IsUnavailable(early.status())) << early.status();
  EXPECT_TRUE(absl::StrContains(early.status().message(), "starting")) << early.status();
  ASSERT_TRUE(manager.Start().ok());
  // The leftover of a backup cut short is gone.
  EXPECT_FALSE(fs::exists(absl::StrCat(options.dir, "/", kNamePrefix, "x", kTemporarySuffix)));
  EXPECT_NE(manager.Status().next_run, absl::InfiniteFuture());
  for (int round = 1; round <= 3; ++round) {
    absl::StatusOr<std::string> name = manager.RequestBackup();
    ASSERT_TRUE(name.ok()) << name.status();
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (manager.Status().successes < static_cast<uint64_t>(round) && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    BackupStatus status = manager.Status();
    ASSERT_EQ(status.successes, static_cast<uint64_t>(round)) << status.last_error;
    ASSERT_TRUE(status.last_success.has_value());
    EXPECT_EQ(status.last_success->name, *name);
    EXPECT_GT(status.last_success->bytes, 0u);
    EXPECT_GT(status.last_success->stored_bytes, 0u);
    EXPECT_EQ(status.failures, 0u);
    absl::SleepFor(absl::Milliseconds(2));  // distinct names
  }
  auto listed = ListBackups(options.dir);
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 2u);  // retention
  manager.Stop();
  absl::StatusOr<std::string> late = manager.RequestBackup();
  EXPECT_TRUE(absl::IsUnavailable(late.status())) << late.status();
  EXPECT_TRUE(absl::StrContains(late.status().message(), "stopping")) << late.status();
}

TEST(BackupManagerTest, ASecondRequestWhileOneRunsIsRefused) {
  ScopedTempDir dir;
  std::unique_ptr<engine::Engine> engine = OpenEngine(dir.Subdir("data"));
  ASSERT_NE(engine, nullptr);
  for (int i = 0; i < 3000; ++i) {
    ASSERT_TRUE(engine->Put(absl::StrCat("k", i), std::string(200, 'x')).ok());
  }
  BackupManagerOptions options;
  options.dir = dir.Subdir("backups");
  options.bytes_per_second = 64 << 10;  // minutes for this store: it is cancelled below
  BackupManager manager(engine.get(), options);
  ASSERT_TRUE(manager.Start().ok());
  ASSERT_TRUE(manager.RequestBackup().ok());
  EXPECT_TRUE(absl::IsAlreadyExists(manager.RequestBackup().status()));
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (manager.Status().progress_bytes == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_TRUE(manager.Status().running);
  // Stopping cancels it; nothing complete is left.
  manager.Stop();
  BackupStatus status = manager.Status();
  EXPECT_FALSE(status.running);
  EXPECT_EQ(status.failures, 1u);
  EXPECT_TRUE(fs::is_empty(options.dir));
}

TEST(BackupManagerTest, ReconfigureChangesScheduleRetentionAndRate) {
  ScopedTempDir dir;
  std::unique_ptr<engine::Engine> engine = OpenEngine(dir.Subdir("data"));
  ASSERT_NE(engine, nullptr);
  BackupManagerOptions options;
  options.dir = dir.Subdir("backups");
  BackupManager manager(engine.get(), options);
  ASSERT_TRUE(manager.Start().ok());
  EXPECT_EQ(manager.Status().next_run, absl::InfiniteFuture());
  ASSERT_TRUE(manager.Reconfigure("0 3 * * *", 5, 1 << 20).ok());
  BackupStatus status = manager.Status();
  EXPECT_EQ(status.schedule, "0 3 * * *");
  EXPECT_EQ(status.retention, 5u);
  EXPECT_EQ(status.bytes_per_second, 1u << 20);
  const absl::CivilMinute next = absl::ToCivilMinute(status.next_run, absl::UTCTimeZone());
  EXPECT_EQ(next.hour(), 3);
  EXPECT_EQ(next.minute(), 0);
  // A schedule that does not parse changes nothing.
  EXPECT_TRUE(absl::IsInvalidArgument(manager.Reconfigure("0 3 * *", 1, 0)));
  EXPECT_EQ(manager.Status().schedule, "0 3 * * *");
  EXPECT_EQ(manager.Status().retention, 5u);
  ASSERT_TRUE(manager.Reconfigure("", 0, 0).ok());
  EXPECT_EQ(manager.Status().next_run, absl::InfiniteFuture());
  manager.Stop();
}

TEST(BackupManagerTest, ValidatesItsOptions) {
  BackupManagerOptions options;
  options.schedule = "0 3 * * *";
  EXPECT_TRUE(absl::IsInvalidArgument(ValidateBackupOptions(options)));  // no dir
  options.dir = "/tmp/x";
  EXPECT_TRUE(ValidateBackupOptions(options).ok());
  options.schedule = "0 3 * *";
  absl::Status status = ValidateBackupOptions(options);
  EXPECT_TRUE(absl::IsInvalidArgument(status));
  EXPECT_NE(status.message().find("--backup_schedule"), absl::string_view::npos);
}

}  // namespace
}  // namespace logkv::server::backup
