#include "tools/serve_protocol.h"

#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <nlohmann/json.hpp>

#include "tools/commands.h"

namespace mambacv::cli::serve {

namespace {
using json = nlohmann::json;

[[noreturn]] void bad(const std::string& msg) { throw HttpError(400, msg); }

// Deepest "data" nesting accepted: one level per dimension of a tensor of at most this rank.
constexpr int kMaxRank = 8;
// Most inputs / outputs one request may name (the models take one input and offer at most a dozen outputs).
constexpr size_t kMaxTensors = 64;

// Appends the numbers of a (possibly nested) JSON "data" array in row-major order; `count` is the number of values
// seen so far. Nothing is stored past `limit` values (the caller compares count against the shape first).
void flatten_numbers(const json& v, int depth, const std::string& what, std::vector<float>* out, int64_t limit,
                     int64_t* count) {
  if (v.is_array()) {
    if (depth >= kMaxRank) bad(what + ": data nested deeper than " + std::to_string(kMaxRank) + " levels");
    for (const json& e : v) flatten_numbers(e, depth + 1, what, out, limit, count);
    return;
  }
  if (!v.is_number() && !v.is_boolean())
    bad(what + ": data element " + std::to_string(*count) + " is " + v.type_name() + ", expected a number");
  const double d = v.get<double>();
  if (!(std::fabs(d) <= std::numeric_limits<float>::max()))
    bad(what + ": data element " + std::to_string(*count) + " is outside the float range");
  if (*count < limit) out->push_back(static_cast<float>(d));
  ++*count;
}

void flatten_strings(const json& v, int depth, const std::string& what, std::vector<std::string>* out,
                     int64_t limit) {
  if (v.is_array()) {
    if (depth >= kMaxRank) bad(what + ": data nested deeper than " + std::to_string(kMaxRank) + " levels");
    for (const json& e : v) flatten_strings(e, depth + 1, what, out, limit);
    return;
  }
  const std::string elem = what + ": data element " + std::to_string(out->size());
  if (static_cast<int64_t>(out->size()) >= limit) {
    out->emplace_back();  // counted only: the caller reports the mismatch
    return;
  }
  if (v.is_string()) {
    out->push_back(base64_decode(v.get<std::string>(), elem));
  } else if (v.is_object() && v.contains("b64") && v["b64"].is_string()) {
    out->push_back(base64_decode(v["b64"].get<std::string>(), elem));
  } else {
    bad(elem + " is " + std::string(v.type_name()) + ", expected a base64 string or {\"b64\": ...}");
  }
}

std::string json_string(const std::string& s) {
  return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

// An optional integer parameter of a "parameters" object (a JSON number or a numeric string, as clients send both).
bool get_int_param(const json& params, const char* key, const std::string& where, int64_t lo, int64_t hi,
                   int64_t* out) {
  if (!params.is_object() || !params.contains(key)) return false;
  const json& v = params[key];
  int64_t x = 0;
  if (v.is_number_integer()) {
    x = v.get<int64_t>();
  } else if (v.is_string()) {
    const std::string s = v.get<std::string>();
    auto r = std::from_chars(s.data(), s.data() + s.size(), x);
    if (r.ec != std::errc() || r.ptr != s.data() + s.size()) bad(where + "." + key + ": expected an integer");
  } else {
    bad(where + "." + key + ": expected an integer, got " + v.type_name());
  }
  if (x < lo || x > hi)
    bad(where + "." + key + ": expected " + std::to_string(lo) + " to " + std::to_string(hi) + ", got " +
        std::to_string(x));
  *out = x;
  return true;
}

bool get_bool_param(const json& params, const char* key, const std::string& where, bool* out) {
  if (!params.is_object() || !params.contains(key)) return false;
  const json& v = params[key];
  if (!v.is_boolean()) bad(where + "." + key + ": expected true or false, got " + v.type_name());
  *out = v.get<bool>();
  return true;
}

size_t wire_size(const std::string& datatype) {
  if (datatype == "FP32") return 4;
  if (datatype == "FP16" || datatype == "BF16") return 2;
  return 0;
}

}  // namespace

int64_t checked_numel(const std::vector<int64_t>& shape, const std::string& what) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) bad(what + ": shape has a negative dimension (" + std::to_string(d) + ")");
    if (d != 0 && n > (int64_t{1} << 40) / d) bad(what + ": shape has more than 2^40 elements");
    n *= d;
  }
  return n;
}

std::string base64_decode(const std::string& text, const std::string& what) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  size_t n = text.size();
  while (n > 0 && text[n - 1] == '=' && text.size() - n < 2) --n;
  if (n % 4 == 1) bad(what + ": not base64 (length " + std::to_string(text.size()) + ")");
  std::string out;
  out.reserve(n / 4 * 3 + 2);
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; ++i) {
    const int v = value(text[i]);
    if (v < 0) bad(what + ": not base64 (character " + std::to_string(i) + ")");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

std::string error_body(const std::string& message) {
  return json_text(nlohmann::ordered_json({{"error", message}}));
}

InferRequest parse_infer_request(const std::string& body, const std::string* json_length) {
  size_t header_len = body.size();
  if (json_length) {
    uint64_t v = 0;
    auto r = std::from_chars(json_length->data(), json_length->data() + json_length->size(), v);
    if (r.ec != std::errc() || r.ptr != json_length->data() + json_length->size())
      bad("Inference-Header-Content-Length: expected a byte count, got '" + *json_length + "'");
    if (v > body.size())
      bad("Inference-Header-Content-Length: " + std::to_string(v) + " bytes of JSON declared but the body has " +
          std::to_string(body.size()));
    header_len = static_cast<size_t>(v);
  }
  json j;
  try {
    j = json::parse(body.data(), body.data() + header_len);
  } catch (const json::exception& e) {
    std::string why = e.what();
    if (why.size() > 300) why = why.substr(0, 300) + "...";
    bad("request body is not valid JSON: " + why);
  }
  if (!j.is_object()) bad("request body: expected a JSON object");
  InferRequest req;
  if (j.contains("id")) {
    if (!j["id"].is_string()) bad("id: expected a string");
    req.id = j["id"].get<std::string>();
  }
  static const json kNoParams = json::object();
  const json& params = j.contains("parameters") ? j["parameters"] : kNoParams;
  if (!params.is_object()) bad("parameters: expected an object");
  get_bool_param(params, "binary_data_output", "parameters", &req.binary_output);
  int64_t k = 0;
  if (get_int_param(params, "classification", "parameters", 1, 100000, &k)) req.classification = static_cast<int>(k);
  if (params.contains("score_threshold")) {
    if (!params["score_threshold"].is_number()) bad("parameters.score_threshold: expected a number");
    req.score_threshold = params["score_threshold"].get<double>();
    if (!(req.score_threshold >= 0 && req.score_threshold <= 1)) bad("parameters.score_threshold: expected 0 to 1");
  }
  if (get_int_param(params, "max_detections", "parameters", 1, 10000, &k)) req.max_detections = static_cast<int>(k);
  get_bool_param(params, "masks", "parameters", &req.masks);

  if (!j.contains("inputs") || !j["inputs"].is_array() || j["inputs"].empty())
    bad("inputs: expected a non-empty array of tensors");
  if (j["inputs"].size() > kMaxTensors) bad("inputs: more than " + std::to_string(kMaxTensors) + " tensors");
  size_t offset = header_len;  // the next binary tensor's first byte
  for (size_t i = 0; i < j["inputs"].size(); ++i) {
    const json& in = j["inputs"][i];
    const std::string at = "inputs[" + std::to_string(i) + "]";
    if (!in.is_object()) bad(at + ": expected an object");
    InferInput t;
    if (!in.contains("name") || !in["name"].is_string()) bad(at + ".name: expected a string");
    t.name = in["name"].get<std::string>();
    const std::string what = "input '" + t.name + "'";
    if (!in.contains("datatype") || !in["datatype"].is_string()) bad(what + ": datatype: expected a string");
    t.datatype = in["datatype"].get<std::string>();
    static const char* kKnown[] = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                                   "INT64", "FP16", "FP32", "FP64", "BF16", "BYTES"};
    bool known = false;
    for (const char* d : kKnown) known = known || t.datatype == d;
    if (!known) bad(what + ": unknown datatype '" + t.datatype + "'");
    const bool is_bytes = t.datatype == "BYTES";
    if (!is_bytes && !wire_size(t.datatype))
      bad(what + ": datatype " + t.datatype + " is not accepted (FP32, FP16 or BF16 tensors, BYTES for images)");
    if (!in.contains("shape") || !in["shape"].is_array()) bad(what + ": shape: expected an array of integers");
    if (in["shape"].size() > static_cast<size_t>(kMaxRank)) bad(what + ": shape has more than 8 dimensions");
    for (const json& d : in["shape"]) {
      if (!d.is_number_integer()) bad(what + ": shape: expected an array of integers");
      t.shape.push_back(d.get<int64_t>());
    }
    const int64_t numel = checked_numel(t.shape, what);
    const json& in_params = in.contains("parameters") ? in["parameters"] : kNoParams;
    int64_t bin_size = -1;
    get_int_param(in_params, "binary_data_size", what + ".parameters", 0, int64_t{1} << 40, &bin_size);
    if (bin_size >= 0 && in.contains("data")) bad(what + ": has both data and parameters.binary_data_size");
    if (bin_size < 0 && !in.contains("data")) bad(what + ": no data (and no parameters.binary_data_size)");
    if (bin_size >= 0) {
      if (!json_length) bad(what + ": binary_data_size without the Inference-Header-Content-Length header");
      if (static_cast<uint64_t>(bin_size) > body.size() - offset)
        bad(what + ": binary_data_size " + std::to_string(bin_size) + " runs past the end of the body (" +
            std::to_string(body.size() - offset) + " bytes left)");
      const char* p = body.data() + offset;
      offset += static_cast<size_t>(bin_size);
      if (is_bytes) {
        size_t pos = 0;
        while (pos < static_cast<size_t>(bin_size)) {
          if (static_cast<size_t>(bin_size) - pos < 4) bad(what + ": BYTES element " + std::to_string(t.bytes.size()) + " has a truncated length prefix");
          uint32_t len = 0;
          std::memcpy(&len, p + pos, 4);  // little-endian on the hosts this builds for
          pos += 4;
          if (len > static_cast<size_t>(bin_size) - pos)
            bad(what + ": BYTES element " + std::to_string(t.bytes.size()) + " declares " + std::to_string(len) +
                " bytes but " + std::to_string(static_cast<size_t>(bin_size) - pos) + " remain");
          if (static_cast<int64_t>(t.bytes.size()) >= numel)
            bad(what + ": binary data holds more than the shape's " + std::to_string(numel) + " elements");
          t.bytes.emplace_back(p + pos, len);
          pos += len;
        }
        if (static_cast<int64_t>(t.bytes.size()) != numel)
          bad(what + ": shape holds " + std::to_string(numel) + " elements but the binary data " +
              std::to_string(t.bytes.size()));
      } else {
        const size_t es = wire_size(t.datatype);
        if (static_cast<uint64_t>(bin_size) != static_cast<uint64_t>(numel) * es)
          bad(what + ": binary_data_size is " + std::to_string(bin_size) + " bytes but shape " + "holds " +
              std::to_string(numel) + " " + t.datatype + " elements (" + std::to_string(numel * es) + " bytes)");
        const Shape shape(t.shape.begin(), t.shape.end());
        Tensor raw = Tensor::empty(shape, es == 4 ? DType::F32 : t.datatype == "FP16" ? DType::F16 : DType::BF16);
        if (bin_size) std::memcpy(raw.raw(), p, static_cast<size_t>(bin_size));
        t.tensor = raw.to(DType::F32);
      }
    } else if (is_bytes) {
      flatten_strings(in["data"], 0, what, &t.bytes, numel);
      if (static_cast<int64_t>(t.bytes.size()) != numel)
        bad(what + ": shape holds " + std::to_string(numel) + " elements but data has " +
            std::to_string(t.bytes.size()));
    } else {
      std::vector<float> values;
      values.reserve(static_cast<size_t>(std::min<int64_t>(numel, static_cast<int64_t>(header_len / 2))));
      int64_t count = 0;
      flatten_numbers(in["data"], 0, what, &values, numel, &count);
      if (count != numel)
        bad(what + ": shape holds " + std::to_string(numel) + " elements but data has " + std::to_string(count));
      t.tensor = Tensor::from_vector(values, Shape(t.shape.begin(), t.shape.end()));
      // FP16 / BF16 sent as JSON numbers: rounded to that type as the binary form would be
      if (t.datatype != "FP32")
        t.tensor = t.tensor.to(t.datatype == "FP16" ? DType::F16 : DType::BF16).to(DType::F32);
    }
    if (t.tensor.defined()) {
      const float* v = t.tensor.f32();
      for (int64_t e = 0; e < t.tensor.numel(); ++e)
        if (!std::isfinite(v[e])) bad(what + ": element " + std::to_string(e) + " is not finite (NaN or Inf)");
    }
    req.inputs.push_back(std::move(t));
  }
  if (json_length && offset != body.size())
    bad("binary data: the inputs' binary_data_size values add up to " + std::to_string(offset - header_len) +
        " bytes but " + std::to_string(body.size() - header_len) + " follow the JSON header");

  if (j.contains("outputs")) {
    if (!j["outputs"].is_array()) bad("outputs: expected an array");
    if (j["outputs"].size() > kMaxTensors) bad("outputs: more than " + std::to_string(kMaxTensors) + " tensors");
    std::set<std::string> seen;
    for (size_t i = 0; i < j["outputs"].size(); ++i) {
      const json& o = j["outputs"][i];
      const std::string at = "outputs[" + std::to_string(i) + "]";
      if (!o.is_object() || !o.contains("name") || !o["name"].is_string()) bad(at + ".name: expected a string");
      RequestedOutput r;
      r.name = o["name"].get<std::string>();
      r.binary = req.binary_output;
      const json& op = o.contains("parameters") ? o["parameters"] : kNoParams;
      if (!op.is_object()) bad(at + ".parameters: expected an object");
      get_bool_param(op, "binary_data", at + ".parameters", &r.binary);
      if (get_int_param(op, "classification", at + ".parameters", 1, 100000, &k)) r.classification = static_cast<int>(k);
      if (!seen.insert(r.name).second) bad(at + ": output '" + r.name + "' requested twice");
      req.outputs.push_back(r);
    }
  }
  return req;
}

std::string OutputTensor::datatype() const {
  if (!strings.empty() || !tensor.defined()) return "BYTES";
  return tensor.dtype() == DType::I64 ? "INT64" : "FP32";
}

EncodedResponse encode_infer_response(const std::string& model, const std::string& version, const std::string& id,
                                      const std::vector<OutputTensor>& outputs) {
  EncodedResponse r;
  std::string js = "{\"model_name\":" + json_string(model) + ",\"model_version\":" + json_string(version);
  if (!id.empty()) js += ",\"id\":" + json_string(id);
  js += ",\"outputs\":[";
  std::string binary;
  bool any_binary = false;
  char buf[64];
  for (size_t o = 0; o < outputs.size(); ++o) {
    const OutputTensor& t = outputs[o];
    if (o) js += ',';
    js += "{\"name\":" + json_string(t.name) + ",\"datatype\":\"" + t.datatype() + "\",\"shape\":[";
    for (size_t d = 0; d < t.shape.size(); ++d) js += (d ? "," : "") + std::to_string(t.shape[d]);
    js += "]";
    if (t.binary) {
      any_binary = true;
      const size_t before = binary.size();
      if (t.datatype() == "BYTES") {
        for (const std::string& s : t.strings) {
          const uint32_t len = static_cast<uint32_t>(s.size());
          binary.append(reinterpret_cast<const char*>(&len), 4);
          binary += s;
        }
      } else {
        binary.append(static_cast<const char*>(t.tensor.raw()), t.tensor.nbytes());
      }
      js += ",\"parameters\":{\"binary_data_size\":" + std::to_string(binary.size() - before) + "}}";
      continue;
    }
    js += ",\"data\":[";
    if (t.datatype() == "BYTES") {
      for (size_t i = 0; i < t.strings.size(); ++i) js += (i ? "," : "") + json_string(t.strings[i]);
    } else if (t.tensor.dtype() == DType::I64) {
      const int64_t* v = t.tensor.data<int64_t>();
      for (int64_t i = 0; i < t.tensor.numel(); ++i) js += (i ? "," : "") + std::to_string(v[i]);
    } else {
      // the shortest text that reads back as the same f32 (callers check finiteness: JSON has no NaN)
      const float* v = t.tensor.f32();
      js.reserve(js.size() + static_cast<size_t>(t.tensor.numel()) * 12);
      for (int64_t i = 0; i < t.tensor.numel(); ++i) {
        if (i) js += ',';
        auto res = std::to_chars(buf, buf + sizeof(buf), v[i]);
        js.append(buf, res.ptr);
      }
    }
    js += "]}";
  }
  js += "]}";
  if (any_binary) {
    r.json_length = static_cast<int64_t>(js.size());
    r.body = std::move(js);
    r.body += binary;
    r.content_type = "application/octet-stream";
  } else {
    r.body = std::move(js);
    r.content_type = "application/json";
  }
  return r;
}

}  // namespace mambacv::cli::serve
