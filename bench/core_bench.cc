// `zerocan-bench --only core`: encode+decode of the same data with zerocan, msgpack-c
// and protobuf, and a raw memcpy of the payload bytes, side by side in one run.
//
// "Encode+decode" is the whole round a message makes without a socket: for zerocan
// EnvelopeWriter -> Finish -> LoopbackFrames -> Message::Decode -> reading every value
// back through Value accessors or As<T>; for the baselines packing into a reused buffer,
// unpacking/parsing, and reading the same values back. Each baseline gets its best
// ordinary use: a reused output buffer, and for msgpack-c unpacking that references
// strings and binaries in place instead of copying them.
//
// Timing: every contender of a case runs one batch per round, rounds interleaved, and
// the table shows the median of the rounds. Times are process CPU time (all threads,
// libzmq's I/O threads included), not wall time: the machine is small and shared. The
// programs' memory policy (zerocan::UseReusingAllocator) is on, so large baselines
// measure copies rather than first-touch page faults.
#define MSGPACK_NO_BOOST 1
#include <msgpack.hpp>

#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "baseline.pb.h"
#include "bench.h"
#include "bench_util.h"
#include "zerocan/zerocan.h"
#include "internal/testing.h"

namespace zerocan::bench {
namespace {

constexpr size_t kKiB = 1024, kMiB = 1024 * 1024, kGiB = 1024 * 1024 * 1024;

// msgpack-c: reference strings and binaries inside the packed buffer (no copy).
bool ReferenceAll(msgpack::type::object_type, std::size_t, void*) { return true; }

struct Sizes {
  size_t zc_envelope = 0;
  size_t zc_total = 0;
  size_t zc_frames = 0;
  size_t mp = 0;
  size_t pb = 0;
  size_t payload = 0;  // raw bytes of the data itself (what memcpy copies)
};

struct CaseResult {
  std::string name;
  Sizes sizes;
  double zc = 0, mp = 0, pb = 0, mc = 0;  // median ns per encode+decode
};

struct Config {
  bool quick;
  int rounds;
  double batch_ns;
};

// The zerocan side of a case: `encode(id)` builds the Outgoing; `read(message)` reads
// every value back and returns a checksum.
template <class Encode, class Read>
Contender ZerocanContender(std::string name, Encode encode, Read read) {
  return Contender{std::move(name), [encode, read](int n) {
                     for (int i = 0; i < n; ++i) {
                       Outgoing out = encode(static_cast<uint64_t>(i));
                       Message m = Message::Decode(LoopbackFrames(std::move(out)));
                       Sink(read(m));
                     }
                   }};
}

template <class Pack, class Read>
Contender MsgpackContender(std::shared_ptr<msgpack::sbuffer> buffer, Pack pack, Read read) {
  return Contender{"msgpack-c", [buffer, pack, read](int n) {
                     for (int i = 0; i < n; ++i) {
                       buffer->clear();
                       msgpack::packer<msgpack::sbuffer> pk(*buffer);
                       pack(pk, static_cast<uint64_t>(i));
                       msgpack::object_handle oh =
                           msgpack::unpack(buffer->data(), buffer->size(), ReferenceAll);
                       Sink(read(oh.get()));
                     }
                   }};
}

template <class Build, class Read>
Contender ProtobufContender(std::shared_ptr<std::string> wire, Build build, Read read) {
  return Contender{"protobuf", [wire, build, read](int n) {
                     for (int i = 0; i < n; ++i) {
                       {
                         zerocan_bench::PApply p;
                         build(&p, static_cast<uint64_t>(i));
                         p.SerializeToString(wire.get());
                       }
                       zerocan_bench::PApply q;
                       q.ParseFromString(*wire);
                       Sink(read(q));
                     }
                   }};
}

Contender MemcpyContender(size_t bytes) {
  auto src = std::make_shared<std::vector<char>>(bytes, 1);
  auto dst = std::make_shared<std::vector<char>>(bytes, 0);
  return Contender{"memcpy", [src, dst, bytes](int n) {
                     for (int i = 0; i < n; ++i) {
                       std::memcpy(dst->data(), src->data(), bytes);
                       Sink(static_cast<uint64_t>((*dst)[bytes / 2]));
                     }
                   }};
}

// Runs the four contenders of one case interleaved and fills the medians.
void Measure(const Config& cfg, CaseResult* result, Contender zc, Contender mp, Contender pb,
             Contender mc, int rounds = 0) {
  std::vector<Contender*> all = {&zc, &mp, &pb, &mc};
  for (Contender* c : all) Calibrate(*c, cfg.batch_ns);
  Interleave(all, rounds > 0 ? rounds : cfg.rounds);
  result->zc = zc.median();
  result->mp = mp.median();
  result->pb = pb.median();
  result->mc = mc.median();
}

template <class Encode>
void ZerocanSizes(Encode encode, Sizes* s) {
  Outgoing out = encode(0);
  s->zc_envelope = out.envelope().size();
  s->zc_frames = out.frame_count();
  s->zc_total = s->zc_envelope;
  for (const Buffer& b : out.payload_frames()) s->zc_total += b.size();
}

// ---- the cases -----------------------------------------------------------------------

CaseResult SmallApply(const Config& cfg) {
  CaseResult r{"small apply (3 scalars)"};
  const int64_t a = 42;
  const double b = 2.5;
  const std::string c = "abc";
  auto zc_encode = [=](uint64_t id) {
    EnvelopeWriter w;
    w.SetHeader(Header{id, 7, id + 1, 0});
    ApplyWriter apply = w.StartApply("f", 3, 0);
    apply.arg(0).Int(a);
    apply.arg(1).Float(b);
    apply.arg(2).Text(c);
    return w.Finish();
  };
  auto zc_read = [](const Message& m) {
    return static_cast<uint64_t>(m.arg(0).As<int64_t>() + static_cast<int64_t>(m.arg(1).As<double>()) +
                                 static_cast<int64_t>(m.arg(2).AsText().size()) + m.function().size());
  };
  auto sbuf = std::make_shared<msgpack::sbuffer>();
  auto mp_pack = [=](msgpack::packer<msgpack::sbuffer>& pk, uint64_t id) {
    pk.pack_array(4);
    pk.pack(std::string_view("f"));
    pk.pack_array(3);
    pk.pack(a);
    pk.pack(b);
    pk.pack(std::string_view(c));
    pk.pack_map(0);
    pk.pack(id);
  };
  auto mp_read = [](const msgpack::object& o) {
    const auto& args = o.via.array.ptr[1].via.array;
    return static_cast<uint64_t>(args.ptr[0].as<int64_t>() + static_cast<int64_t>(args.ptr[1].as<double>()) +
                                 static_cast<int64_t>(args.ptr[2].as<std::string_view>().size()) +
                                 o.via.array.ptr[0].as<std::string_view>().size());
  };
  auto wire = std::make_shared<std::string>();
  auto pb_build = [=](zerocan_bench::PApply* p, uint64_t id) {
    p->set_function("f");
    p->set_id(id);
    p->add_args()->set_i(a);
    p->add_args()->set_f(b);
    p->add_args()->set_text(c);
  };
  auto pb_read = [](const zerocan_bench::PApply& q) {
    return static_cast<uint64_t>(q.args(0).i() + static_cast<int64_t>(q.args(1).f()) +
                                 static_cast<int64_t>(q.args(2).text().size()) + q.function().size());
  };
  ZerocanSizes(zc_encode, &r.sizes);
  r.sizes.payload = 8 + 8 + c.size();
  Measure(cfg, &r, ZerocanContender("zerocan", zc_encode, zc_read),
          MsgpackContender(sbuf, mp_pack, mp_read), ProtobufContender(wire, pb_build, pb_read),
          MemcpyContender(r.sizes.payload));
  sbuf->clear();
  {
    msgpack::packer<msgpack::sbuffer> pk(*sbuf);
    mp_pack(pk, 0);
  }
  r.sizes.mp = sbuf->size();
  zerocan_bench::PApply p;
  pb_build(&p, 0);
  r.sizes.pb = p.ByteSizeLong();
  return r;
}

CaseResult Ints(const Config& cfg, size_t* envelope_bytes) {
  CaseResult r{"ints 0..999 (vector<int64_t>)"};
  auto ints = std::make_shared<std::vector<int64_t>>(1000);
  for (int64_t i = 0; i < 1000; ++i) (*ints)[static_cast<size_t>(i)] = i;
  auto zc_encode = [ints](uint64_t id) {
    EnvelopeWriter w;
    w.SetHeader(Header{id, 7, id + 1, 0});
    w.StartApply("f", 1, 0).arg(0).Write(*ints);
    return w.Finish();
  };
  auto zc_read = [](const Message& m) {
    std::vector<int64_t> v = m.arg(0).As<std::vector<int64_t>>();
    return static_cast<uint64_t>(v.size() + static_cast<size_t>(v[999]));
  };
  auto sbuf = std::make_shared<msgpack::sbuffer>();
  auto mp_pack = [ints](msgpack::packer<msgpack::sbuffer>& pk, uint64_t id) {
    pk.pack_array(4);
    pk.pack(std::string_view("f"));
    pk.pack_array(1);
    pk.pack(*ints);
    pk.pack_map(0);
    pk.pack(id);
  };
  auto mp_read = [](const msgpack::object& o) {
    std::vector<int64_t> v = o.via.array.ptr[1].via.array.ptr[0].as<std::vector<int64_t>>();
    return static_cast<uint64_t>(v.size() + static_cast<size_t>(v[999]));
  };
  auto wire = std::make_shared<std::string>();
  auto pb_build = [ints](zerocan_bench::PApply* p, uint64_t id) {
    p->set_function("f");
    p->set_id(id);
    auto* t = p->add_args()->mutable_tensor();
    t->set_dtype(4);
    t->add_shape(ints->size());
    t->mutable_ints()->Add(ints->begin(), ints->end());
  };
  auto pb_read = [](const zerocan_bench::PApply& q) {
    const auto& src = q.args(0).tensor().ints();
    std::vector<int64_t> v(src.begin(), src.end());
    return static_cast<uint64_t>(v.size() + static_cast<size_t>(v[999]));
  };
  ZerocanSizes(zc_encode, &r.sizes);
  *envelope_bytes = r.sizes.zc_envelope;
  r.sizes.payload = ints->size() * sizeof(int64_t);
  Measure(cfg, &r, ZerocanContender("zerocan", zc_encode, zc_read),
          MsgpackContender(sbuf, mp_pack, mp_read), ProtobufContender(wire, pb_build, pb_read),
          MemcpyContender(r.sizes.payload));
  sbuf->clear();
  {
    msgpack::packer<msgpack::sbuffer> pk(*sbuf);
    mp_pack(pk, 0);
  }
  r.sizes.mp = sbuf->size();
  zerocan_bench::PApply p;
  pb_build(&p, 0);
  r.sizes.pb = p.ByteSizeLong();
  return r;
}

CaseResult TenFieldMap(const Config& cfg) {
  CaseResult r{"10-field map<string,int64>"};
  auto map = std::make_shared<std::map<std::string, int64_t>>();
  for (int i = 0; i < 10; ++i) (*map)[absl::StrCat("field", i)] = i * 1000 + 7;
  auto zc_encode = [map](uint64_t id) {
    EnvelopeWriter w;
    w.SetHeader(Header{id, 7, id + 1, 0});
    w.StartApply("f", 1, 0).arg(0).Write(*map);
    return w.Finish();
  };
  auto zc_read = [](const Message& m) {
    ValueMap map = m.arg(0).AsMap();
    uint64_t sum = 0;
    for (size_t i = 0; i < map.size(); ++i) {
      sum += map.key(i).AsText().size() + static_cast<uint64_t>(map.value(i).AsInt());
    }
    return sum;
  };
  auto sbuf = std::make_shared<msgpack::sbuffer>();
  auto mp_pack = [map](msgpack::packer<msgpack::sbuffer>& pk, uint64_t id) {
    pk.pack_array(4);
    pk.pack(std::string_view("f"));
    pk.pack_array(1);
    pk.pack(*map);
    pk.pack_map(0);
    pk.pack(id);
  };
  auto mp_read = [](const msgpack::object& o) {
    const auto& m = o.via.array.ptr[1].via.array.ptr[0].via.map;
    uint64_t sum = 0;
    for (uint32_t i = 0; i < m.size; ++i) {
      sum += m.ptr[i].key.as<std::string_view>().size() + static_cast<uint64_t>(m.ptr[i].val.as<int64_t>());
    }
    return sum;
  };
  auto wire = std::make_shared<std::string>();
  auto pb_build = [map](zerocan_bench::PApply* p, uint64_t id) {
    p->set_function("f");
    p->set_id(id);
    auto* m = p->add_args()->mutable_map();
    for (const auto& [k, v] : *map) {
      auto* e = m->add_entries();
      e->set_key(k);
      e->mutable_value()->set_i(v);
    }
  };
  auto pb_read = [](const zerocan_bench::PApply& q) {
    uint64_t sum = 0;
    for (const auto& e : q.args(0).map().entries()) sum += e.key().size() + static_cast<uint64_t>(e.value().i());
    return sum;
  };
  ZerocanSizes(zc_encode, &r.sizes);
  for (const auto& [k, v] : *map) r.sizes.payload += k.size() + sizeof(v);
  Measure(cfg, &r, ZerocanContender("zerocan", zc_encode, zc_read),
          MsgpackContender(sbuf, mp_pack, mp_read), ProtobufContender(wire, pb_build, pb_read),
          MemcpyContender(r.sizes.payload));
  sbuf->clear();
  {
    msgpack::packer<msgpack::sbuffer> pk(*sbuf);
    mp_pack(pk, 0);
  }
  r.sizes.mp = sbuf->size();
  zerocan_bench::PApply p;
  pb_build(&p, 0);
  r.sizes.pb = p.ByteSizeLong();
  return r;
}

using Record = std::tuple<int64_t, double, std::string>;

CaseResult Records(const Config& cfg) {
  CaseResult r{"1000 records (int, float, text)"};
  auto records = std::make_shared<std::vector<Record>>();
  for (int i = 0; i < 1000; ++i) records->emplace_back(i, i * 0.5, absl::StrCat("user-", i));
  auto zc_encode = [records](uint64_t id) {
    EnvelopeWriter w;
    w.SetHeader(Header{id, 7, id + 1, 0});
    w.StartApply("f", 1, 0).arg(0).Write(*records);
    return w.Finish();
  };
  auto zc_read = [](const Message& m) {
    Value list = m.arg(0);
    uint64_t sum = 0;
    size_t n = list.size();
    for (size_t i = 0; i < n; ++i) {
      Value rec = list[i];
      sum += static_cast<uint64_t>(rec[0].AsInt()) + static_cast<uint64_t>(rec[1].AsDouble()) +
             rec[2].AsText().size();
    }
    return sum;
  };
  auto sbuf = std::make_shared<msgpack::sbuffer>();
  auto mp_pack = [records](msgpack::packer<msgpack::sbuffer>& pk, uint64_t id) {
    pk.pack_array(4);
    pk.pack(std::string_view("f"));
    pk.pack_array(1);
    pk.pack(*records);
    pk.pack_map(0);
    pk.pack(id);
  };
  auto mp_read = [](const msgpack::object& o) {
    const auto& list = o.via.array.ptr[1].via.array.ptr[0].via.array;
    uint64_t sum = 0;
    for (uint32_t i = 0; i < list.size; ++i) {
      const auto& rec = list.ptr[i].via.array;
      sum += static_cast<uint64_t>(rec.ptr[0].as<int64_t>()) + static_cast<uint64_t>(rec.ptr[1].as<double>()) +
             rec.ptr[2].as<std::string_view>().size();
    }
    return sum;
  };
  auto wire = std::make_shared<std::string>();
  auto pb_build = [records](zerocan_bench::PApply* p, uint64_t id) {
    p->set_function("f");
    p->set_id(id);
    auto* list = p->add_args()->mutable_list();
    for (const auto& [a, b, c] : *records) {
      auto* rec = list->add_items()->mutable_list();
      rec->add_items()->set_i(a);
      rec->add_items()->set_f(b);
      rec->add_items()->set_text(c);
    }
  };
  auto pb_read = [](const zerocan_bench::PApply& q) {
    uint64_t sum = 0;
    for (const auto& item : q.args(0).list().items()) {
      const auto& rec = item.list();
      sum += static_cast<uint64_t>(rec.items(0).i()) + static_cast<uint64_t>(rec.items(1).f()) +
             rec.items(2).text().size();
    }
    return sum;
  };
  ZerocanSizes(zc_encode, &r.sizes);
  for (const auto& rec : *records) r.sizes.payload += 16 + std::get<2>(rec).size();
  Measure(cfg, &r, ZerocanContender("zerocan", zc_encode, zc_read),
          MsgpackContender(sbuf, mp_pack, mp_read), ProtobufContender(wire, pb_build, pb_read),
          MemcpyContender(r.sizes.payload));
  sbuf->clear();
  {
    msgpack::packer<msgpack::sbuffer> pk(*sbuf);
    mp_pack(pk, 0);
  }
  r.sizes.mp = sbuf->size();
  zerocan_bench::PApply p;
  pb_build(&p, 0);
  r.sizes.pb = p.ByteSizeLong();
  return r;
}

// A float64 tensor of `bytes` bytes, filled.
Tensor MakeTensor(size_t bytes) {
  Buffer data = Buffer::Allocate(bytes);
  auto* d = reinterpret_cast<double*>(data.mutable_data());
  size_t n = bytes / sizeof(double);
  for (size_t i = 0; i < n; i += 512) d[i] = static_cast<double>(i);  // touch every page
  std::memset(data.mutable_data(), 1, bytes);
  return Tensor(DType::kFloat64, Shape{n}, std::move(data));
}

uint64_t FirstLast(const void* data, size_t bytes) {
  double first, last;
  std::memcpy(&first, data, sizeof first);
  std::memcpy(&last, static_cast<const char*>(data) + bytes - sizeof last, sizeof last);
  return static_cast<uint64_t>(first + last);
}

CaseResult OneTensor(const Config& cfg, size_t bytes, const std::string& label) {
  CaseResult r{absl::StrCat("tensor ", label)};
  auto tensor = std::make_shared<Tensor>(MakeTensor(bytes));
  auto zc_encode = [tensor](uint64_t id) {
    EnvelopeWriter w;
    w.SetHeader(Header{id, 7, id + 1, 0});
    w.StartApply("f", 1, 0).arg(0).WriteTensor(*tensor);
    return w.Finish();
  };
  auto zc_read = [](const Message& m) {
    Tensor t = m.arg(0).AsTensor();
    return FirstLast(t.data_as<double>(), t.nbytes()) + t.size();
  };
  auto sbuf = std::make_shared<msgpack::sbuffer>(bytes + 256);
  auto mp_pack = [tensor](msgpack::packer<msgpack::sbuffer>& pk, uint64_t id) {
    pk.pack_array(4);
    pk.pack(std::string_view("f"));
    pk.pack_array(1);
    pk.pack_array(3);
    pk.pack(static_cast<int>(DType::kFloat64));
    pk.pack_array(1);
    pk.pack(tensor->size());
    pk.pack_bin(static_cast<uint32_t>(tensor->nbytes()));
    pk.pack_bin_body(reinterpret_cast<const char*>(tensor->data().data()),
                     static_cast<uint32_t>(tensor->nbytes()));
    pk.pack_map(0);
    pk.pack(id);
  };
  auto mp_read = [](const msgpack::object& o) {
    const auto& t = o.via.array.ptr[1].via.array.ptr[0].via.array;
    const auto& bin = t.ptr[2].via.bin;
    return FirstLast(bin.ptr, bin.size) + t.ptr[1].via.array.ptr[0].as<uint64_t>();
  };
  auto wire = std::make_shared<std::string>();
  auto pb_build = [tensor](zerocan_bench::PApply* p, uint64_t id) {
    p->set_function("f");
    p->set_id(id);
    auto* t = p->add_args()->mutable_tensor();
    t->set_dtype(static_cast<int>(DType::kFloat64));
    t->add_shape(tensor->size());
    t->set_data(tensor->data().data(), tensor->nbytes());
  };
  auto pb_read = [](const zerocan_bench::PApply& q) {
    const auto& t = q.args(0).tensor();
    return FirstLast(t.data().data(), t.data().size()) + t.shape(0);
  };
  ZerocanSizes(zc_encode, &r.sizes);
  r.sizes.payload = bytes;
  int rounds = bytes >= kGiB ? 3 : bytes >= 64 * kMiB ? (cfg.quick ? 3 : 5) : 0;
  Measure(cfg, &r, ZerocanContender("zerocan", zc_encode, zc_read),
          MsgpackContender(sbuf, mp_pack, mp_read), ProtobufContender(wire, pb_build, pb_read),
          MemcpyContender(r.sizes.payload), rounds);
  r.sizes.mp = sbuf->size();
  r.sizes.pb = wire->size();
  return r;
}

// 1000 tensors of 1 KiB as one list argument. With the default policy they are copied
// inline (one frame); with inline_threshold = 1 each becomes its own frame.
struct ManySmall {
  CaseResult inline_case;
  CaseResult frames_case;
  double tcp_inline = 0, tcp_frames = 0;  // encode+send+receive+decode over tcp loopback
};

ManySmall ManyTensors(const Config& cfg) {
  ManySmall out;
  out.inline_case.name = "1000 x 1 KiB tensors";
  out.frames_case.name = "1000 x 1 KiB tensors, 1000 frames";
  constexpr size_t kCount = 1000, kEach = kKiB;
  Tensor all = MakeTensor(kCount * kEach);
  auto tensors = std::make_shared<std::vector<Tensor>>();
  for (size_t i = 0; i < kCount; ++i) {
    tensors->emplace_back(DType::kFloat64, Shape{kEach / 8}, all.data().Slice(i * kEach, kEach));
  }
  Policy framed = Policy::Default();
  framed.inline_threshold = 1;
  auto zc_encode_with = [tensors](const Policy& policy) {
    return [tensors, policy](uint64_t id) {
      EnvelopeWriter w(policy);
      w.SetHeader(Header{id, 7, id + 1, 0});
      w.StartApply("f", 1, 0).arg(0).Write(*tensors);
      return w.Finish();
    };
  };
  auto zc_read = [](const Message& m) {
    Value list = m.arg(0);
    uint64_t sum = 0;
    size_t n = list.size();
    for (size_t i = 0; i < n; ++i) {
      Tensor t = list[i].AsTensor();
      sum += FirstLast(t.data_as<double>(), t.nbytes());
    }
    return sum;
  };
  auto sbuf = std::make_shared<msgpack::sbuffer>(kCount * (kEach + 64));
  auto mp_pack = [tensors](msgpack::packer<msgpack::sbuffer>& pk, uint64_t id) {
    pk.pack_array(4);
    pk.pack(std::string_view("f"));
    pk.pack_array(1);
    pk.pack_array(static_cast<uint32_t>(tensors->size()));
    for (const Tensor& t : *tensors) {
      pk.pack_array(3);
      pk.pack(static_cast<int>(DType::kFloat64));
      pk.pack_array(1);
      pk.pack(t.size());
      pk.pack_bin(static_cast<uint32_t>(t.nbytes()));
      pk.pack_bin_body(reinterpret_cast<const char*>(t.data().data()), static_cast<uint32_t>(t.nbytes()));
    }
    pk.pack_map(0);
    pk.pack(id);
  };
  auto mp_read = [](const msgpack::object& o) {
    const auto& list = o.via.array.ptr[1].via.array.ptr[0].via.array;
    uint64_t sum = 0;
    for (uint32_t i = 0; i < list.size; ++i) {
      const auto& bin = list.ptr[i].via.array.ptr[2].via.bin;
      sum += FirstLast(bin.ptr, bin.size);
    }
    return sum;
  };
  auto wire = std::make_shared<std::string>();
  auto pb_build = [tensors](zerocan_bench::PApply* p, uint64_t id) {
    p->set_function("f");
    p->set_id(id);
    auto* list = p->add_args()->mutable_list();
    for (const Tensor& t : *tensors) {
      auto* pt = list->add_items()->mutable_tensor();
      pt->set_dtype(static_cast<int>(DType::kFloat64));
      pt->add_shape(t.size());
      pt->set_data(t.data().data(), t.nbytes());
    }
  };
  auto pb_read = [](const zerocan_bench::PApply& q) {
    uint64_t sum = 0;
    for (const auto& item : q.args(0).list().items()) {
      sum += FirstLast(item.tensor().data().data(), item.tensor().data().size());
    }
    return sum;
  };
  auto inline_encode = zc_encode_with(Policy::Default());
  auto framed_encode = zc_encode_with(framed);
  ZerocanSizes(inline_encode, &out.inline_case.sizes);
  ZerocanSizes(framed_encode, &out.frames_case.sizes);
  out.inline_case.sizes.payload = out.frames_case.sizes.payload = kCount * kEach;

  // Loopback (no socket): both zerocan placements and the baselines, interleaved.
  Contender zc_inline = ZerocanContender("zerocan", inline_encode, zc_read);
  Contender zc_frames = ZerocanContender("zerocan 1000 frames", framed_encode, zc_read);
  Contender mp = MsgpackContender(sbuf, mp_pack, mp_read);
  Contender pb = ProtobufContender(wire, pb_build, pb_read);
  Contender mc = MemcpyContender(kCount * kEach);

  // Through a real socket pair (tcp loopback, one thread: send, then receive): where
  // per-frame costs show.
  zmq::context_t ctx(1);
  zmq::socket_t tx(ctx, zmq::socket_type::pair), rx(ctx, zmq::socket_type::pair);
  rx.bind("tcp://127.0.0.1:*");
  tx.connect(rx.get(zmq::sockopt::last_endpoint));
  auto over_tcp = [&tx, &rx, zc_read](auto encode, std::string name) {
    return Contender{std::move(name), [&tx, &rx, encode, zc_read](int n) {
                       for (int i = 0; i < n; ++i) {
                         Tracker t = Send(tx, encode(static_cast<uint64_t>(i)));
                         std::optional<ReceivedMessage> got = Receive(rx);
                         Message m = Message::Decode(std::move(*got));
                         Sink(zc_read(m));
                       }
                     }};
  };
  Contender tcp_inline = over_tcp(inline_encode, "tcp inline");
  Contender tcp_frames = over_tcp(framed_encode, "tcp frames");

  std::vector<Contender*> contenders = {&zc_inline, &zc_frames, &mp, &pb, &mc, &tcp_inline, &tcp_frames};
  for (Contender* c : contenders) Calibrate(*c, cfg.batch_ns);
  Interleave(contenders, cfg.rounds);
  out.inline_case.zc = zc_inline.median();
  out.frames_case.zc = zc_frames.median();
  out.inline_case.mp = out.frames_case.mp = mp.median();
  out.inline_case.pb = out.frames_case.pb = pb.median();
  out.inline_case.mc = out.frames_case.mc = mc.median();
  out.tcp_inline = tcp_inline.median();
  out.tcp_frames = tcp_frames.median();
  out.inline_case.sizes.mp = out.frames_case.sizes.mp = sbuf->size();
  out.inline_case.sizes.pb = out.frames_case.sizes.pb = wire->size();
  return out;
}

// A tensor over inproc:// (zmq PAIR): encode+send+receive+decode per message, and
// whether the receiver's view has the sender's address, there and back.
struct InprocResult {
  double ns = 0;
  bool same_address_there = false;
  bool same_address_back = false;
};

InprocResult Inproc(zmq::context_t& ctx, const Tensor& tensor, int rounds, int iters) {
  static int counter = 0;
  std::string endpoint = absl::StrCat("inproc://core-bench-", counter++);
  zmq::socket_t a(ctx, zmq::socket_type::pair), b(ctx, zmq::socket_type::pair);
  b.bind(endpoint);
  a.connect(endpoint);
  InprocResult result;
  const std::byte* origin = tensor.data().data();
  std::vector<double> samples;
  for (int r = 0; r < rounds; ++r) {
    double t0 = CpuNs();
    for (int i = 0; i < iters; ++i) {
      EnvelopeWriter w;
      w.SetHeader(Header{static_cast<uint64_t>(i), 7, static_cast<uint64_t>(i) + 1, 0});
      w.StartApply("f", 1, 0).arg(0).WriteTensor(tensor);
      Send(a, w.Finish());
      Message m = Message::Decode(std::move(*Receive(b)));
      Tensor got = m.arg(0).AsTensor();
      Sink(FirstLast(got.data_as<double>(), got.nbytes()));
      result.same_address_there = got.data().data() == origin;
    }
    samples.push_back((CpuNs() - t0) / iters);
  }
  result.ns = Median(samples);
  // Back: the receiver returns the view it got as its result; the original sender
  // must see its own buffer again.
  {
    EnvelopeWriter w;
    w.StartApply("f", 1, 0).arg(0).WriteTensor(tensor);
    Send(a, w.Finish());
    Message m = Message::Decode(std::move(*Receive(b)));
    Tensor got = m.arg(0).AsTensor();
    EnvelopeWriter reply;
    reply.StartResult(m.message_id(), "bench").WriteTensor(got);
    Send(b, reply.Finish());
    Message back = Message::Decode(std::move(*Receive(a)));
    result.same_address_back = back.result().AsTensor().data().data() == origin;
  }
  return result;
}

std::string Pass(bool ok) { return ok ? "PASS" : "FAIL"; }

}  // namespace

void RunCore(const Options& options, std::vector<Row>* rows) {
  UseReusingAllocator();
  Config cfg{options.quick, options.quick ? 7 : 15, options.quick ? 2e6 : 4e6};
  double started = NowNs();
  if (!options.json) {
    std::printf("== core: encode+decode per message (process CPU time, median of %d interleaved rounds) ==\n",
                cfg.rounds);
    std::printf("inline threshold %zu B; memory policy: reusing allocator\n",
                Policy::Default().inline_threshold);
    std::fflush(stdout);
  }
  auto progress = [&](const std::string& what) {
    if (!options.json) {
      std::fprintf(stderr, "  [%5.1f s] %s\n", (NowNs() - started) / 1e9, what.c_str());
    }
  };

  std::vector<CaseResult> cases;
  size_t ints_envelope = 0;
  progress("small apply");
  cases.push_back(SmallApply(cfg));
  progress("ints 0..999");
  cases.push_back(Ints(cfg, &ints_envelope));
  progress("10-field map");
  cases.push_back(TenFieldMap(cfg));
  progress("1000 records");
  cases.push_back(Records(cfg));
  std::vector<std::pair<size_t, std::string>> tensor_sizes = {
      {kKiB, "1 KiB"}, {kMiB, "1 MiB"}, {64 * kMiB, "64 MiB"}};
  if (!options.quick) tensor_sizes.push_back({kGiB, "1 GiB"});
  for (const auto& [bytes, label] : tensor_sizes) {
    progress(absl::StrCat("tensor ", label));
    cases.push_back(OneTensor(cfg, bytes, label));
  }
  progress("1000 x 1 KiB tensors");
  ManySmall many = ManyTensors(cfg);
  cases.push_back(many.inline_case);
  cases.push_back(many.frames_case);

  progress("inproc 64 KiB and 1 GiB");
  zmq::context_t ctx(1);
  InprocResult small, big;
  {
    Tensor t64k = MakeTensor(64 * kKiB);
    size_t big_bytes = options.quick ? 64 * kMiB : kGiB;
    Tensor t1g = MakeTensor(big_bytes);
    // Interleave the two sizes round by round.
    std::vector<double> s_small, s_big;
    for (int r = 0; r < cfg.rounds; ++r) {
      InprocResult a = Inproc(ctx, t64k, 1, 200);
      InprocResult b = Inproc(ctx, t1g, 1, 200);
      s_small.push_back(a.ns);
      s_big.push_back(b.ns);
      small = a;
      big = b;
    }
    small.ns = Median(s_small);
    big.ns = Median(s_big);
  }
  std::string big_label = options.quick ? "64 MiB" : "1 GiB";

  for (const CaseResult& c : cases) {
    auto add = [&](const std::string& baseline, double v) {
      rows->push_back(Row{"core", c.name, "ns/op", c.zc, baseline, v, c.zc > 0 ? v / c.zc : 0});
    };
    add("msgpack-c", c.mp);
    add("protobuf", c.pb);
    add("memcpy", c.mc);
    rows->push_back(Row{"core", c.name + " envelope", "bytes", static_cast<double>(c.sizes.zc_envelope),
                        "msgpack-c", static_cast<double>(c.sizes.mp),
                        c.sizes.zc_envelope > 0 ? static_cast<double>(c.sizes.mp) / c.sizes.zc_envelope : 0});
    rows->push_back(Row{"core", c.name + " frames", "frames", static_cast<double>(c.sizes.zc_frames), "", 0, 0});
  }
  rows->push_back(Row{"core", "1000 x 1 KiB tensors over tcp", "ns/op", many.tcp_inline,
                      "1000 frames over tcp", many.tcp_frames, many.tcp_frames / many.tcp_inline});
  rows->push_back(Row{"core", "inproc " + big_label + " tensor", "ns/op", big.ns, "inproc 64 KiB tensor",
                      small.ns, small.ns / big.ns});

  const CaseResult& sa = cases[0];
  const CaseResult& ints = cases[1];
  const CaseResult& map = cases[2];
  struct Target {
    std::string what, measured;
    bool ok;
  };
  std::vector<Target> targets = {
      {"envelope(ints 0..999) <= 2752 B", absl::StrCat(ints_envelope, " B"), ints_envelope <= 2752},
      {"small apply: no slower than msgpack-c", FormatRatio(sa.mp / sa.zc), sa.mp / sa.zc >= 1.0},
      {"small apply: >= 1.5x faster than protobuf", FormatRatio(sa.pb / sa.zc), sa.pb / sa.zc >= 1.5},
      {"10-field map: no slower than msgpack-c", FormatRatio(map.mp / map.zc), map.mp / map.zc >= 1.0},
      {"10-field map: >= 1.5x faster than protobuf", FormatRatio(map.pb / map.zc), map.pb / map.zc >= 1.5},
      {"ints 0..999: >= 5x faster than msgpack-c", FormatRatio(ints.mp / ints.zc), ints.mp / ints.zc >= 5},
      {"1000 x 1 KiB tensors: <= 2 frames", absl::StrCat(many.inline_case.sizes.zc_frames, " frame(s)"),
       many.inline_case.sizes.zc_frames <= 2},
      {"1000 x 1 KiB: >= 3x faster than 1000 frames (tcp)",
       absl::StrCat(FormatRatio(many.tcp_frames / many.tcp_inline), " (", FormatNs(many.tcp_inline), " vs ",
                    FormatNs(many.tcp_frames), ")"),
       many.tcp_frames / many.tcp_inline >= 3},
      {"inproc " + big_label + " within 2x of 64 KiB",
       absl::StrCat(FormatNs(big.ns), " vs ", FormatNs(small.ns), " = ", FormatRatio(big.ns / small.ns)),
       big.ns <= 2 * small.ns},
      {"inproc " + big_label + ": same address both ways",
       absl::StrCat(big.same_address_there ? "there yes" : "there NO", ", ",
                    big.same_address_back ? "back yes" : "back NO"),
       big.same_address_there && big.same_address_back},
  };
  for (const Target& t : targets) {
    rows->push_back(Row{"core", "target: " + t.what, "pass", t.ok ? 1.0 : 0.0, "", 0, 0});
  }
  if (options.json) return;

  Table table({"case", "zerocan", "bytes", "frames", "msgpack-c", "bytes", "protobuf", "bytes", "memcpy",
               "vs msgpack", "vs protobuf", "vs memcpy"});
  for (const CaseResult& c : cases) {
    table.Add({c.name, FormatNs(c.zc), FormatBytes(static_cast<double>(c.sizes.zc_total)),
               absl::StrCat(c.sizes.zc_frames), FormatNs(c.mp), FormatBytes(static_cast<double>(c.sizes.mp)),
               FormatNs(c.pb), FormatBytes(static_cast<double>(c.sizes.pb)), FormatNs(c.mc),
               FormatRatio(c.mp / c.zc), FormatRatio(c.pb / c.zc), FormatRatio(c.mc / c.zc)});
  }
  std::printf("\n");
  table.Print();
  std::printf("(ratios: baseline time / zerocan time, >1 = zerocan faster; bytes: all frames; "
              "memcpy copies the raw data bytes once)\n\n");
  Table extra({"through sockets", "zerocan", "compared with", "time", "ratio"});
  extra.Add({"1000 x 1 KiB tensors, tcp loopback", FormatNs(many.tcp_inline), "as 1000 frames",
             FormatNs(many.tcp_frames), FormatRatio(many.tcp_frames / many.tcp_inline)});
  extra.Add({"inproc " + big_label + " tensor (encode+send+recv+decode)", FormatNs(big.ns),
             "inproc 64 KiB tensor", FormatNs(small.ns), FormatRatio(small.ns / big.ns)});
  extra.Print();
  std::printf("\n");
  Table verdict({"acceptance target", "measured", ""});
  for (const Target& t : targets) verdict.Add({t.what, t.measured, Pass(t.ok)});
  verdict.Print();
  std::printf("(core section took %.1f s)\n\n", (NowNs() - started) / 1e9);
  std::fflush(stdout);
}

}  // namespace zerocan::bench
