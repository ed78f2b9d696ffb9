// fdatasync_bench: what an fdatasync costs after small appends to a mapped
// segment, by how the segment's blocks were reserved. logkvd's active
// segments are files of their full size, mapped shared, with blocks reserved
// by fallocate ahead of the appends (unwritten extents: the first write into
// one makes the next fdatasync also commit its conversion to the journal).
// The alternative measured here writes zeros over the reservation once, so
// appends land in written blocks.
//
//   fdatasync_bench [--dir=DIR] [--syncs=N] [--rounds=R]
//
// Modes, alternated R times in one run:
//   fallocate  posix_fallocate of the reservation (logkvd's way)
//   zeros      the reservation written with zeros and synced first
//   sparse     nothing reserved (blocks allocated as pages are written back)
// Each sync follows 4 appends of 150 bytes (a group commit of 4 SETs of
// 100-byte values).
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr size_t kCapacityBytes = 64 << 20;
constexpr size_t kReservedBytes = 8 << 20;
constexpr size_t kRecordBytes = 150;
constexpr int kRecordsPerSync = 4;

struct Figures {
  double mean_us = 0, p50_us = 0, p99_us = 0;
};

bool Fail(const char* what) {
  std::perror(what);
  return false;
}

bool Run(const std::string& path, const std::string& mode, int syncs, Figures* out) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Fail("open");
  bool ok = ::ftruncate(fd, kCapacityBytes) == 0 || Fail("ftruncate");
  if (ok && mode == "fallocate") ok = ::posix_fallocate(fd, 0, kReservedBytes) == 0;
  if (ok && mode == "zeros") {
    const std::vector<char> zeros(1 << 20, 0);
    for (size_t offset = 0; ok && offset < kReservedBytes; offset += zeros.size()) {
      ok = ::pwrite(fd, zeros.data(), zeros.size(), static_cast<off_t>(offset)) ==
               static_cast<ssize_t>(zeros.size()) ||
           Fail("pwrite");
    }
    ok = ok && (::fdatasync(fd) == 0 || Fail("fdatasync"));
  }
  void* mapping = ok ? ::mmap(nullptr, kCapacityBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                     : MAP_FAILED;
  if (ok && mapping == MAP_FAILED) ok = Fail("mmap");
  std::vector<double> micros;
  if (ok) {
    char* base = static_cast<char*>(mapping);
    char record[kRecordBytes];
    std::memset(record, 'x', sizeof(record));
    size_t offset = 0;
    for (int i = 0; ok && i < syncs && offset + kRecordsPerSync * kRecordBytes <= kReservedBytes;
         ++i) {
      for (int j = 0; j < kRecordsPerSync; ++j, offset += kRecordBytes) {
        std::memcpy(base + offset, record, kRecordBytes);
      }
      const auto start = std::chrono::steady_clock::now();
      ok = ::fdatasync(fd) == 0 || Fail("fdatasync");
      micros.push_back(
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
              .count());
    }
    ::munmap(mapping, kCapacityBytes);
  }
  ::close(fd);
  ::unlink(path.c_str());
  if (!ok || micros.empty()) return false;
  std::sort(micros.begin(), micros.end());
  double sum = 0;
  for (double m : micros) sum += m;
  out->mean_us = sum / static_cast<double>(micros.size());
  out->p50_us = micros[micros.size() / 2];
  out->p99_us = micros[micros.size() * 99 / 100];
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = ".";
  int syncs = 3000;
  int rounds = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--dir=", 0) == 0) {
      dir = arg.substr(6);
    } else if (arg.rfind("--syncs=", 0) == 0) {
      syncs = std::atoi(arg.c_str() + 8);
    } else if (arg.rfind("--rounds=", 0) == 0) {
      rounds = std::atoi(arg.c_str() + 9);
    } else {
      std::fprintf(stderr, "usage: fdatasync_bench [--dir=DIR] [--syncs=N] [--rounds=R]\n");
      return 2;
    }
  }
  const std::string path = dir + "/fdatasync_bench.tmp";
  std::printf("%-6s %-10s %10s %10s %10s\n", "round", "mode", "mean_us", "p50_us", "p99_us");
  for (int round = 1; round <= rounds; ++round) {
    for (const char* mode : {"fallocate", "zeros", "sparse"}) {
      Figures figures;
      if (!Run(path, mode, syncs, &figures)) {
        std::fprintf(stderr, "fdatasync_bench: %s failed\n", mode);
        return 1;
      }
      std::printf("%-6d %-10s %10.0f %10.0f %10.0f\n", round, mode, figures.mean_us,
                  figures.p50_us, figures.p99_us);
    }
  }
  return 0;
}
