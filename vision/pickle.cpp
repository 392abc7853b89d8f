// A restricted pickle interpreter for torch.save checkpoints. Opcode semantics follow CPython's Lib/pickle.py
// (`_Unpickler.load_*`) and the torch side follows torch/serialization.py (`_save` persistent ids) and
// torch/_utils.py (`_rebuild_tensor_v2`); see pickle.h for the safety rules.
#include "vision/pickle.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "vision/mapped_file.h"

namespace mambacv::detail::pickle {
namespace {

// Bounds. A real checkpoint needs a few objects per tensor and a stack about twice its largest dict.
constexpr size_t kMaxObjects = size_t{1} << 22;  // ~0.7 GB worst case
constexpr size_t kMaxStack = size_t{1} << 22;
constexpr size_t kMaxMarks = size_t{1} << 12;
constexpr size_t kMaxMemo = size_t{1} << 22;
constexpr size_t kMaxGlobalName = 1024;
constexpr size_t kMaxRank = 64;
// Entries copied out of existing containers (OrderedDict(list) copies the list): an input of n bytes may copy at
// most kCopiesPerByte * n + kMinCopies of them, so a memoised list rebuilt over and over (6 bytes of input per
// rebuild) cannot turn a few MB into hours of work or gigabytes.
constexpr size_t kCopiesPerByte = 4;
constexpr size_t kMinCopies = size_t{1} << 20;

struct KnownGlobal {
  const char* name;
  Global global;
  DType dtype;
};
// The allow-list. Storage classes carry the element type of the tensors built on them.
constexpr KnownGlobal kKnownGlobals[] = {
    {"collections.OrderedDict", Global::OrderedDict, DType::F32},
    {"torch._utils._rebuild_tensor_v2", Global::RebuildTensorV2, DType::F32},
    {"torch._utils._rebuild_tensor", Global::RebuildTensor, DType::F32},
    {"torch._utils._rebuild_parameter", Global::RebuildParameter, DType::F32},
    {"torch._utils._rebuild_parameter_with_state", Global::RebuildParameter, DType::F32},
    {"torch._tensor._rebuild_from_type_v2", Global::RebuildFromTypeV2, DType::F32},
    {"torch.FloatStorage", Global::StorageType, DType::F32},
    {"torch.HalfStorage", Global::StorageType, DType::F16},
    {"torch.BFloat16Storage", Global::StorageType, DType::BF16},
    {"torch.DoubleStorage", Global::StorageType, DType::F64},
    {"torch.LongStorage", Global::StorageType, DType::I64},
    {"torch.IntStorage", Global::StorageType, DType::I32},
    {"torch.ShortStorage", Global::StorageType, DType::I16},
    {"torch.CharStorage", Global::StorageType, DType::I8},
    {"torch.ByteStorage", Global::StorageType, DType::U8},
    {"torch.BoolStorage", Global::StorageType, DType::Bool},
};

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::Str: return "str";
    case Kind::Bytes: return "bytes";
    case Kind::Tuple: return "tuple";
    case Kind::List: return "list";
    case Kind::Dict: return "dict";
    case Kind::Global: return "global";
    case Kind::Opaque: return "object";
    case Kind::Storage: return "storage";
    case Kind::Tensor: return "tensor";
  }
  return "?";
}

}  // namespace

std::string describe(const Object* o) {
  std::ostringstream s;
  s << kind_name(o->kind);
  switch (o->kind) {
    case Kind::Tuple:
    case Kind::List: s << "(" << o->items.size() << ")"; break;
    case Kind::Dict: s << "(" << o->dict.size() << ")"; break;
    case Kind::Global:
    case Kind::Opaque: s << " " << o->s; break;
    case Kind::Tensor: s << " " << dtype_name(o->dtype) << shape_str(o->size); break;
    default: break;
  }
  return s.str();
}

struct Unpickler::Impl {
  const uint8_t* data;
  size_t size;
  size_t pos = 0;
  std::string where;
  std::vector<std::unique_ptr<Object>> arena;
  std::vector<Ref> stack;
  std::vector<size_t> marks;  // stack heights at each MARK
  std::unordered_map<uint64_t, Ref> memo;
  Ref none = nullptr, yes = nullptr, no = nullptr;
  size_t op_pos = 0;  // offset of the opcode being run, for messages
  size_t copies = 0;  // entries copied out of existing containers so far
  size_t copy_budget() const { return kCopiesPerByte * size + kMinCopies; }

  [[noreturn]] void fail(const std::string& what) const {
    MAMBACV_FAIL(where << ": " << what << " (opcode at byte " << op_pos << "; corrupt or unsupported pickle)");
  }

  // ---- input ----
  const uint8_t* take(uint64_t n) {
    if (n > size - pos) fail("data runs past the end of the pickle");
    const uint8_t* p = data + pos;
    pos += n;
    return p;
  }
  uint64_t take_le(int n) { return read_le(take(static_cast<uint64_t>(n)), n); }
  std::string take_line() {  // GLOBAL operands: "module\n" "name\n"
    const void* nl = std::memchr(data + pos, '\n', std::min(size - pos, kMaxGlobalName + 1));
    if (!nl) fail("GLOBAL name is not newline-terminated within " + std::to_string(kMaxGlobalName) + " bytes");
    size_t n = static_cast<const uint8_t*>(nl) - (data + pos);
    std::string s(reinterpret_cast<const char*>(take(n)), n);
    ++pos;
    return s;
  }

  // ---- objects ----
  Ref make(Kind k) {
    if (arena.size() >= kMaxObjects) fail("more than " + std::to_string(kMaxObjects) + " objects");
    arena.push_back(std::make_unique<Object>());
    arena.back()->kind = k;
    return arena.back().get();
  }
  Ref make_int(int64_t v) {
    Ref o = make(Kind::Int);
    o->i = v;
    return o;
  }
  Ref make_str(Kind k, const uint8_t* p, uint64_t n) {
    Ref o = make(k);
    o->s.assign(reinterpret_cast<const char*>(p), n);
    return o;
  }
  Ref opaque(const std::string& what) {
    Ref o = make(Kind::Opaque);
    o->s = what;
    return o;
  }

  // ---- stack ----
  size_t floor() const { return marks.empty() ? 0 : marks.back(); }
  void push(Ref o) {
    if (stack.size() >= kMaxStack) fail("stack deeper than " + std::to_string(kMaxStack));
    stack.push_back(o);
  }
  Ref pop() {
    if (stack.size() <= floor()) fail("stack underflow");
    Ref o = stack.back();
    stack.pop_back();
    return o;
  }
  Ref& top() {
    if (stack.size() <= floor()) fail("stack underflow");
    return stack.back();
  }
  std::vector<Ref> pop_mark() {  // the items pushed since the last MARK
    if (marks.empty()) fail("no MARK on the stack");
    std::vector<Ref> items(stack.begin() + static_cast<std::ptrdiff_t>(marks.back()), stack.end());
    stack.resize(marks.back());
    marks.pop_back();
    return items;
  }
  Ref make_tuple(std::vector<Ref> items) {
    Ref t = make(Kind::Tuple);
    t->items = std::move(items);
    return t;
  }
  void memo_put(uint64_t key) {
    if (memo.size() >= kMaxMemo && !memo.count(key)) fail("memo larger than " + std::to_string(kMaxMemo));
    memo[key] = top();
  }
  void memo_get(uint64_t key) {
    auto it = memo.find(key);
    if (it == memo.end()) fail("memo key " + std::to_string(key) + " was never stored");
    push(it->second);
  }

  // ---- containers ----
  void dict_set(Ref d, Ref k, Ref v) {
    if (d->kind == Kind::Opaque) return;  // e.g. a dict subclass we do not model: drop its items
    if (d->kind != Kind::Dict) fail("SETITEM on a " + describe(d));
    if (k->kind == Kind::Str) {
      if (!d->str_keys) d->str_keys = std::make_unique<std::unordered_map<std::string, size_t>>();
      auto [it, inserted] = d->str_keys->emplace(k->s, d->dict.size());
      if (!inserted) {
        d->dict[it->second].second = v;
        return;
      }
    }
    d->dict.emplace_back(k, v);
  }
  void list_append(Ref l, Ref v) {
    if (l->kind == Kind::Opaque) return;
    if (l->kind != Kind::List) fail("APPEND on a " + describe(l));
    l->items.push_back(v);
  }

  // ---- globals and calls ----
  Ref find_global(const std::string& module, const std::string& name) {
    Ref g = make(Kind::Global);
    g->s = module + "." + name;
    for (const auto& k : kKnownGlobals)
      if (g->s == k.name) {
        g->global = k.global;
        g->dtype = k.dtype;
      }
    return g;
  }

  Ref new_object(Ref cls) {  // NEWOBJ / NEWOBJ_EX: cls.__new__(cls, *args)
    if (cls->kind == Kind::Opaque) return opaque(cls->s);
    if (cls->kind != Kind::Global) fail("NEWOBJ on a " + describe(cls));
    if (cls->global == Global::OrderedDict) return make(Kind::Dict);
    return opaque(cls->s);
  }

  int64_t int_arg(Ref o, const char* what) {
    if (o->kind != Kind::Int) fail(std::string(what) + " must be an int, found " + describe(o));
    return o->i;
  }

  // _rebuild_tensor_v2(storage, storage_offset, size, stride, ...): a strided view of `storage`.
  Ref rebuild_tensor(const std::vector<Ref>& a) {
    if (a.size() < 4) fail("_rebuild_tensor_v2 needs at least 4 arguments, got " + std::to_string(a.size()));
    Ref storage = a[0];
    if (storage->kind == Kind::Opaque) return opaque("tensor on " + storage->s);
    if (storage->kind != Kind::Storage) fail("_rebuild_tensor_v2 storage argument is a " + describe(storage));
    if (a[2]->kind != Kind::Tuple || a[3]->kind != Kind::Tuple || a[2]->items.size() != a[3]->items.size() ||
        a[2]->items.size() > kMaxRank)
      fail("_rebuild_tensor_v2 size and stride must be tuples of equal length (at most " + std::to_string(kMaxRank) +
           ")");
    Ref t = make(Kind::Tensor);
    t->items = {storage};
    t->dtype = storage->dtype;
    t->i = int_arg(a[1], "storage offset");
    if (t->i < 0) fail("negative storage offset");
    // Elements touched: offset + sum((size_i - 1) * stride_i) must lie inside the storage (when numel > 0).
    int64_t numel = 1, last = t->i;
    bool overflow = false;
    for (size_t d = 0; d < a[2]->items.size(); ++d) {
      int64_t n = int_arg(a[2]->items[d], "tensor size"), st = int_arg(a[3]->items[d], "tensor stride");
      if (n < 0 || st < 0) fail("negative tensor size or stride");
      t->size.push_back(n);
      t->stride.push_back(st);
      int64_t span = 0;
      overflow |= __builtin_mul_overflow(numel, n, &numel);
      if (n > 0) overflow |= __builtin_mul_overflow(n - 1, st, &span) || __builtin_add_overflow(last, span, &last);
    }
    int64_t bytes = 0;
    overflow |= __builtin_mul_overflow(numel, static_cast<int64_t>(dtype_size(t->dtype)), &bytes);
    if (overflow) fail("tensor size " + shape_str(t->size) + " / stride " + shape_str(t->stride) + " overflows");
    if (numel > 0 ? last >= storage->i : t->i > storage->i)
      fail("tensor " + shape_str(t->size) + " with stride " + shape_str(t->stride) + " at offset " +
           std::to_string(t->i) + " reaches beyond its storage '" + storage->s + "' of " + std::to_string(storage->i) +
           " elements");
    return t;
  }

  Ref call(Ref fn, Ref args) {  // REDUCE: fn(*args)
    if (fn->kind == Kind::Opaque) return opaque(fn->s + "(...)");
    if (fn->kind != Kind::Global) fail("REDUCE calls a " + describe(fn));
    if (args->kind != Kind::Tuple) fail("REDUCE arguments must be a tuple, found " + describe(args));
    const std::vector<Ref>& a = args->items;
    switch (fn->global) {
      case Global::OrderedDict: {
        Ref d = make(Kind::Dict);
        if (a.empty()) return d;
        if (a.size() == 1 && (a[0]->kind == Kind::List || a[0]->kind == Kind::Tuple)) {
          copies += a[0]->items.size();
          if (copies > copy_budget())
            fail("OrderedDict(...) copies more than " + std::to_string(copy_budget()) +
                 " entries in all (a pickle bomb: the budget is 4 per input byte)");
          for (Ref p : a[0]->items) {
            if ((p->kind != Kind::Tuple && p->kind != Kind::List) || p->items.size() != 2)
              return opaque("collections.OrderedDict(...)");
            dict_set(d, p->items[0], p->items[1]);
          }
          return d;
        }
        return opaque("collections.OrderedDict(...)");
      }
      case Global::RebuildTensorV2:
      case Global::RebuildTensor: return rebuild_tensor(a);
      case Global::RebuildParameter:
        if (!a.empty() && (a[0]->kind == Kind::Tensor || a[0]->kind == Kind::Opaque)) return a[0];
        fail("_rebuild_parameter needs a tensor argument");
      case Global::RebuildFromTypeV2:
        // (func, new_type, args, state): the tensor is func(*args); subclass type and state are dropped. Only one
        // level deep: a nested _rebuild_from_type_v2 stays opaque (no recursion on untrusted nesting).
        if (a.size() >= 3 && a[0]->kind == Kind::Global && a[0]->global != Global::RebuildFromTypeV2)
          return call(a[0], a[2]);
        return opaque(fn->s + "(...)");
      case Global::StorageType:
      case Global::Unknown: break;
    }
    return opaque(fn->s + "(...)");
  }

  // BINPERSID: torch.save's persistent id ('storage', storage_type, key, location, numel) names the zip record
  // `<archive>/data/<key>` holding `numel` elements of the storage type's dtype.
  Ref persistent_load(Ref pid) {
    if (pid->kind != Kind::Tuple || pid->items.size() < 5 || pid->items[0]->kind != Kind::Str ||
        pid->items[0]->s != "storage")
      fail("unsupported persistent id " + describe(pid) + " (expected ('storage', type, key, location, numel))");
    Ref type = pid->items[1], key = pid->items[2];
    if (type->kind != Kind::Global || type->global != Global::StorageType)
      return opaque("storage of type " + (type->kind == Kind::Global ? type->s : describe(type)));
    Ref s = make(Kind::Storage);
    s->dtype = type->dtype;
    if (key->kind == Kind::Str) {
      s->s = key->s;
    } else if (key->kind == Kind::Int) {
      s->s = std::to_string(key->i);
    } else {
      fail("storage key must be a string, found " + describe(key));
    }
    s->i = int_arg(pid->items[4], "storage size");
    if (s->i < 0) fail("negative storage size");
    return s;
  }

  Ref run() {
    none = make(Kind::None);
    yes = make(Kind::Bool);
    yes->i = 1;
    no = make(Kind::Bool);
    while (true) {
      op_pos = pos;
      const uint8_t op = *take(1);
      switch (op) {
        case 0x80: {  // PROTO
          uint64_t v = take_le(1);
          if (v > 5) fail("pickle protocol " + std::to_string(v) + " is newer than 5");
          break;
        }
        case 0x95: {  // FRAME: a length prefix; the framed opcodes follow inline
          if (take_le(8) > size - pos) fail("FRAME runs past the end of the pickle");
          break;
        }
        case '.':  // STOP
          return pop();
        case '(':  // MARK
          if (marks.size() >= kMaxMarks) fail("MARKs nested deeper than " + std::to_string(kMaxMarks));
          marks.push_back(stack.size());
          break;
        case '0': pop(); break;          // POP
        case '1': pop_mark(); break;     // POP_MARK
        case '2': push(top()); break;    // DUP
        case 'N': push(none); break;     // NONE
        case 0x88: push(yes); break;     // NEWTRUE
        case 0x89: push(no); break;      // NEWFALSE
        case 'J': push(make_int(static_cast<int32_t>(take_le(4)))); break;  // BININT (signed)
        case 'K': push(make_int(static_cast<int64_t>(take_le(1)))); break;  // BININT1
        case 'M': push(make_int(static_cast<int64_t>(take_le(2)))); break;  // BININT2
        case 0x8a:                                                          // LONG1
        case 0x8b: {                                                        // LONG4
          uint64_t n = op == 0x8a ? take_le(1) : take_le(4);
          const uint8_t* p = take(n);
          if (n > 8) {
            push(opaque("int of " + std::to_string(n) + " bytes"));
            break;
          }
          uint64_t v = n ? read_le(p, static_cast<int>(n)) : 0;
          if (n > 0 && n < 8 && (p[n - 1] & 0x80)) v |= ~uint64_t{0} << (8 * n);  // sign-extend two's complement
          push(make_int(static_cast<int64_t>(v)));
          break;
        }
        case 'G': {  // BINFLOAT: big-endian IEEE double
          const uint8_t* p = take(8);
          uint64_t bits = 0;
          for (int k = 0; k < 8; ++k) bits = (bits << 8) | p[k];
          Ref o = make(Kind::Float);
          std::memcpy(&o->f, &bits, 8);
          push(o);
          break;
        }
        case 'X':  // BINUNICODE
        case 0x8c:  // SHORT_BINUNICODE
        case 0x8d:  // BINUNICODE8
        case 'T':  // BINSTRING (protocol-2 py2 str)
        case 'U': {  // SHORT_BINSTRING
          uint64_t n = op == 0x8c || op == 'U' ? take_le(1) : op == 0x8d ? take_le(8) : take_le(4);
          if (op == 'T' && n > 0x7fffffff) fail("negative BINSTRING length");
          push(make_str(Kind::Str, take(n), n));
          break;
        }
        case 'B':  // BINBYTES
        case 'C':  // SHORT_BINBYTES
        case 0x8e:  // BINBYTES8
        case 0x96: {  // BYTEARRAY8
          uint64_t n = op == 'C' ? take_le(1) : op == 'B' ? take_le(4) : take_le(8);
          push(make_str(Kind::Bytes, take(n), n));
          break;
        }
        case '}': push(make(Kind::Dict)); break;   // EMPTY_DICT
        case ']': push(make(Kind::List)); break;   // EMPTY_LIST
        case 0x8f: push(make(Kind::List)); break;  // EMPTY_SET (modelled as a list)
        case ')': push(make_tuple({})); break;     // EMPTY_TUPLE
        case 0x85:                                 // TUPLE1..3
        case 0x86:
        case 0x87: {
          size_t n = op - 0x84u;
          if (stack.size() < floor() + n) fail("stack underflow");
          std::vector<Ref> items(stack.end() - static_cast<std::ptrdiff_t>(n), stack.end());
          stack.resize(stack.size() - n);
          push(make_tuple(std::move(items)));
          break;
        }
        case 't': push(make_tuple(pop_mark())); break;  // TUPLE
        case 0x91: {                                     // FROZENSET
          Ref l = make(Kind::List);
          l->items = pop_mark();
          push(l);
          break;
        }
        case 'l': {  // LIST
          Ref l = make(Kind::List);
          l->items = pop_mark();
          push(l);
          break;
        }
        case 'd': {  // DICT
          std::vector<Ref> items = pop_mark();
          if (items.size() % 2) fail("DICT with an odd number of items");
          Ref d = make(Kind::Dict);
          for (size_t k = 0; k < items.size(); k += 2) dict_set(d, items[k], items[k + 1]);
          push(d);
          break;
        }
        case 's': {  // SETITEM
          Ref v = pop(), k = pop();
          dict_set(top(), k, v);
          break;
        }
        case 'u': {  // SETITEMS
          std::vector<Ref> items = pop_mark();
          if (items.size() % 2) fail("SETITEMS with an odd number of items");
          Ref d = top();
          for (size_t k = 0; k < items.size(); k += 2) dict_set(d, items[k], items[k + 1]);
          break;
        }
        case 'a': {  // APPEND
          Ref v = pop();
          list_append(top(), v);
          break;
        }
        case 'e':     // APPENDS
        case 0x90: {  // ADDITEMS (sets are lists here)
          std::vector<Ref> items = pop_mark();
          Ref l = top();
          for (Ref v : items) list_append(l, v);
          break;
        }
        case 'q': memo_put(take_le(1)); break;     // BINPUT
        case 'r': memo_put(take_le(4)); break;     // LONG_BINPUT
        case 0x94: memo_put(memo.size()); break;   // MEMOIZE
        case 'h': memo_get(take_le(1)); break;     // BINGET
        case 'j': memo_get(take_le(4)); break;     // LONG_BINGET
        case 'c': {                                // GLOBAL
          std::string module = take_line();
          std::string name = take_line();
          push(find_global(module, name));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          Ref name = pop(), module = pop();
          if (module->kind != Kind::Str || name->kind != Kind::Str) fail("STACK_GLOBAL needs two strings");
          if (module->s.size() > kMaxGlobalName || name->s.size() > kMaxGlobalName) fail("STACK_GLOBAL name too long");
          push(find_global(module->s, name->s));
          break;
        }
        case 'R': {  // REDUCE
          Ref args = pop(), fn = pop();
          push(call(fn, args));
          break;
        }
        case 0x81: {  // NEWOBJ
          Ref args = pop(), cls = pop();
          if (args->kind != Kind::Tuple) fail("NEWOBJ arguments must be a tuple");
          push(new_object(cls));
          break;
        }
        case 0x92: {  // NEWOBJ_EX
          Ref kwargs = pop(), args = pop(), cls = pop();
          if (args->kind != Kind::Tuple || kwargs->kind != Kind::Dict) fail("NEWOBJ_EX needs a tuple and a dict");
          push(new_object(cls));
          break;
        }
        case 'b':  // BUILD: obj.__setstate__(state); state is dropped (OrderedDict `_metadata`, Namespace fields...)
          pop();
          top();
          break;
        case 'Q':  // BINPERSID
          push(persistent_load(pop()));
          break;
        default: {
          char buf[64];
          if (op >= 32 && op < 127) {
            std::snprintf(buf, sizeof(buf), "opcode 0x%02x ('%c') is not allowed", op, op);
          } else {
            std::snprintf(buf, sizeof(buf), "opcode 0x%02x is not allowed", op);
          }
          fail(buf);
        }
      }
    }
  }
};

Unpickler::Unpickler(const uint8_t* data, size_t size, std::string where) : impl_(std::make_unique<Impl>()) {
  impl_->data = data;
  impl_->size = size;
  impl_->where = std::move(where);
}
Unpickler::~Unpickler() = default;

Ref Unpickler::load() { return impl_->run(); }

}  // namespace mambacv::detail::pickle
