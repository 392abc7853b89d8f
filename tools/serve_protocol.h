// The Open Inference Protocol (KServe v2) as `mambacv serve` speaks it: an infer request's JSON (with or without
// the binary tensor data extension) parsed into tensors, and an infer response encoded. No HTTP and no model here
// (tools/serve.cpp owns both).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mambacv/error.h"
#include "mambacv/tensor.h"

namespace mambacv::cli::serve {

// A request the server refuses: the HTTP status (400, 404, 413, 503, ...) and the message of {"error": ...}.
class HttpError : public Error {
 public:
  HttpError(int status, const std::string& message) : Error(message), status_(status) {}
  int status() const { return status_; }

 private:
  int status_;
};

// One entry of "inputs". Numeric tensors (FP32 / FP16 / BF16) arrive widened to f32 in `tensor` (shape = `shape`);
// BYTES tensors arrive as their elements in `bytes` (JSON: base64 strings or {"b64": ...}; binary: each element a
// 4-byte little-endian length and its bytes).
struct InferInput {
  std::string name, datatype;
  std::vector<int64_t> shape;
  Tensor tensor;
  std::vector<std::string> bytes;
};

// One entry of "outputs" (or every output the model offers when the request names none).
struct RequestedOutput {
  std::string name;
  bool binary = false;     // parameters.binary_data, or the request's binary_data_output
  int classification = 0;  // parameters.classification: the top K as "score:index:label" strings
};

struct InferRequest {
  std::string id;  // echoed in the response when given
  std::vector<InferInput> inputs;
  std::vector<RequestedOutput> outputs;  // empty: the request named none
  bool binary_output = false;             // parameters.binary_data_output
  int classification = 0;                 // parameters.classification (applies to "logits")
  // Detector parameters (parameters.score_threshold, max_detections, masks); unset: the config's.
  double score_threshold = -1;
  int max_detections = -1;
  bool masks = true;
};

// Element count of `shape` (every dimension >= 0), or HttpError 400 naming `what` when it overflows 2^40 elements.
int64_t checked_numel(const std::vector<int64_t>& shape, const std::string& what);

// body: the whole request body; json_length: the Inference-Header-Content-Length header's value when present
// (the JSON is then the first json_length bytes, the binary tensors follow in input order). Every malformed part
// is an HttpError 400 naming the field: not JSON, no "inputs", an unknown datatype, a shape that does not match the
// data, binary sizes that do not add up to the body, a non-finite value.
InferRequest parse_infer_request(const std::string& body, const std::string* json_length);

// One tensor of a response: f32 (FP32), i64 (INT64) in `tensor`, or strings (BYTES) in `strings`.
struct OutputTensor {
  std::string name;
  std::vector<int64_t> shape;
  Tensor tensor;
  std::vector<std::string> strings;
  bool binary = false;
  std::string datatype() const;
};

struct EncodedResponse {
  std::string body;
  std::string content_type;  // application/json, or application/octet-stream with binary outputs
  int64_t json_length = -1;  // the Inference-Header-Content-Length value when any output went binary
};
EncodedResponse encode_infer_response(const std::string& model, const std::string& version, const std::string& id,
                                      const std::vector<OutputTensor>& outputs);

// {"error": message} as JSON text.
std::string error_body(const std::string& message);
// Decodes standard base64 (padding optional, whitespace refused). Throws HttpError 400 naming `what`.
std::string base64_decode(const std::string& text, const std::string& what);

}  // namespace mambacv::cli::serve
