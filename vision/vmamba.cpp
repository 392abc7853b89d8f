// VMamba: VSSM (arch "vmamba", classifier) and Backbone_VSSM (arch "vmamba_backbone", detection features).
// Mirrors MzeroMiko/VMamba classification/models/vmamba.py VSSM / Backbone_VSSM / VSSBlock / PatchMerging2D /
// _make_patch_embed(_v2) / _make_downsample(_v3) (MODELS.md §3.2, §3.5); the mixer is ssm/ss2d.h.
//
// Internally every map is channels-last (B, H, W, C), whatever the config's norm_layer: "ln" and "ln2d" are the
// same LayerNorm over C and differ only in upstream's tensor layout, so only outputs are transposed (intermediate
// goldens keep the upstream module's layout: NHWC for ln, NCHW for ln2d; API features are always NCHW).
#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "kernels/ops.h"
#include "ssm/ss2d.h"
#include "vision/config_util.h"
#include "vision/cross_scan.h"
#include "vision/network.h"

namespace mambacv::detail {
namespace {

constexpr float kLnEps = 1e-5f;
constexpr int64_t kK = ssm::kSS2DDirections;

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

struct VMambaConfig {
  bool backbone = false;
  std::vector<int64_t> depths, dims;
  int64_t patch_size = 4, num_classes = 1000, img_size = 224;
  int64_t d_state = 16, dt_rank = -1 /* auto */, d_conv = 3;
  double ssm_ratio = 2.0, mlp_ratio = 4.0;
  bool conv_bias = true;
  ssm::SS2DForwardType forward_type;
  std::string downsample = "v2", patchembed = "v1", norm = "ln";
  std::vector<int64_t> out_indices;

  int64_t stages() const { return static_cast<int64_t>(depths.size()); }
  int64_t d_inner(int64_t i) const { return static_cast<int64_t>(ssm_ratio * static_cast<double>(dims[i])); }
  int64_t rank(int64_t i) const { return dt_rank > 0 ? dt_rank : (dims[i] + 15) / 16; }
  int64_t mlp_hidden(int64_t i) const { return static_cast<int64_t>(static_cast<double>(dims[i]) * mlp_ratio); }
  bool channel_first() const { return norm == "ln2d"; }
};

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

VMambaConfig parse_vmamba(const ModelConfig& mc, bool backbone) {
  ConfigReader r(mc);
  const std::string where = r.where();
  // Every upstream VSSM / Backbone_VSSM kwarg; the training-only ones are accepted and ignored.
  static const std::set<std::string> kKnown = {
      "patch_size", "in_chans", "num_classes", "depths", "dims", "ssm_d_state", "ssm_ratio", "ssm_dt_rank",
      "ssm_act_layer", "ssm_conv", "ssm_conv_bias", "ssm_drop_rate", "ssm_init", "forward_type", "mlp_ratio",
      "mlp_act_layer", "mlp_drop_rate", "gmlp", "drop_path_rate", "patch_norm", "norm_layer", "downsample_version",
      "patchembed_version", "use_checkpoint", "posembed", "imgsize", "img_size", "out_indices", "pretrained",
      // mmdetection / wrapper keys that may sit beside the kwargs
      "type", "arch", "init_cfg"};
  for (const auto& [key, value] : r.raw().items()) {
    if (kKnown.count(key)) continue;
    std::string known;
    for (const auto& k : kKnown) known += (known.empty() ? "" : ", ") + k;
    MAMBACV_FAIL(where << ": unknown VMamba config key \"" << key << "\" (known keys: " << known << ")");
  }

  VMambaConfig c;
  c.backbone = backbone;
  c.depths = r.get_int_list("depths", {2, 2, 9, 2});
  MAMBACV_CHECK(!c.depths.empty() && std::all_of(c.depths.begin(), c.depths.end(), [](int64_t d) { return d >= 0; }),
                where << ": \"depths\" must be a non-empty list of block counts >= 0");
  const int64_t S = c.stages();
  c.dims = r.get_int_list("dims", {96, 192, 384, 768});
  if (r.has("dims") && r.raw()["dims"].is_number_integer()) {
    const int64_t d = c.dims[0];
    c.dims.clear();
    for (int64_t i = 0; i < S; ++i) c.dims.push_back(d << i);
  }
  MAMBACV_CHECK(static_cast<int64_t>(c.dims.size()) == S,
                where << ": \"dims\" has " << c.dims.size() << " entries but \"depths\" has " << S);
  for (int64_t d : c.dims) MAMBACV_CHECK(d > 0, where << ": \"dims\" must be positive");
  c.patch_size = r.get_int("patch_size", 4);
  MAMBACV_CHECK(c.patch_size >= 1, where << ": \"patch_size\" must be >= 1, got " << c.patch_size);
  MAMBACV_CHECK(r.get_int("in_chans", 3) == 3, where << ": \"in_chans\" must be 3 (RGB input)");
  c.num_classes = backbone ? 0 : r.get_int("num_classes", 1000);
  MAMBACV_CHECK(c.num_classes >= 0, where << ": \"num_classes\" must be >= 0");
  c.img_size = r.get_int("img_size", r.get_int("imgsize", 224));
  MAMBACV_CHECK(c.img_size >= 1, where << ": \"img_size\" must be positive");

  c.d_state = r.get_int("ssm_d_state", 16);
  c.ssm_ratio = r.get_double("ssm_ratio", 2.0);
  c.dt_rank = r.get_int_or_auto("ssm_dt_rank", -1, -1);
  c.d_conv = r.get_int("ssm_conv", 3);
  c.conv_bias = r.get_bool("ssm_conv_bias", true);
  c.mlp_ratio = r.get_double("mlp_ratio", 4.0);
  MAMBACV_CHECK(c.d_state >= 1, where << ": \"ssm_d_state\" must be >= 1, got " << c.d_state);
  MAMBACV_CHECK(c.ssm_ratio > 0, where << ": \"ssm_ratio\" " << c.ssm_ratio
                                       << " is not supported (a VSSBlock without its SS2D branch); use > 0");
  MAMBACV_CHECK(c.mlp_ratio >= 0, where << ": \"mlp_ratio\" must be >= 0");
  MAMBACV_CHECK(c.dt_rank == -1 || c.dt_rank >= 1, where << ": \"ssm_dt_rank\" must be \"auto\" or >= 1");
  MAMBACV_CHECK(c.d_conv >= 1 && (c.d_conv == 1 || c.d_conv % 2 == 1),
                where << ": \"ssm_conv\" must be 1 (no conv) or an odd kernel size, got " << c.d_conv);
  c.forward_type = ssm::parse_ss2d_forward_type(r.get_string("forward_type", "v2"), where);

  c.norm = lower(r.get_string("norm_layer", "ln"));
  MAMBACV_CHECK(c.norm == "ln" || c.norm == "ln2d",
                where << ": \"norm_layer\" \"" << r.get_string("norm_layer", "") << "\" is not supported (supported: ln, ln2d)");
  c.downsample = r.get_string("downsample_version", "v2");
  MAMBACV_CHECK(c.downsample == "v1" || c.downsample == "v2" || c.downsample == "v3",
                where << ": \"downsample_version\" \"" << c.downsample << "\" is not supported (supported: v1, v2, v3)");
  c.patchembed = r.get_string("patchembed_version", "v1");
  MAMBACV_CHECK(c.patchembed == "v1" || c.patchembed == "v2",
                where << ": \"patchembed_version\" \"" << c.patchembed << "\" is not supported (supported: v1, v2)");
  MAMBACV_CHECK(c.patchembed == "v1" || c.patch_size >= 2,
                where << ": patchembed_version v2 needs \"patch_size\" >= 2, got " << c.patch_size);
  MAMBACV_CHECK(lower(r.get_string("ssm_act_layer", "silu")) == "silu",
                where << ": \"ssm_act_layer\" must be \"silu\" (the only activation implemented)");
  MAMBACV_CHECK(lower(r.get_string("mlp_act_layer", "gelu")) == "gelu",
                where << ": \"mlp_act_layer\" must be \"gelu\" (the only activation implemented)");
  r.require_bool("gmlp", false);
  r.require_bool("patch_norm", true);
  r.require_bool("posembed", false);
  if (c.forward_type.v0) {
    // upstream SS2Dv0 hard-codes a 3x3 depthwise conv with bias and asserts channel_first is False
    MAMBACV_CHECK(!c.channel_first(), where << ": forward_type \"v0\" needs norm_layer \"ln\" (upstream SS2Dv0 "
                                                 "asserts channel_first is False)");
    c.d_conv = 3;
    c.conv_bias = true;
  }

  if (backbone) {
    c.out_indices = r.get_int_list("out_indices", {0, 1, 2, 3});
    std::set<int64_t> seen;
    for (int64_t i : c.out_indices) {
      MAMBACV_CHECK(i >= 0 && i < S && seen.insert(i).second,
                    where << ": \"out_indices\" must hold distinct stage indices in [0, " << S << "), got " << i);
    }
  }
  return c;
}

// One VSSBlock's bound weights.
struct Block {
  const float *norm_w = nullptr, *norm_b = nullptr;
  ssm::SS2DWeights op;
  const float *norm2_w = nullptr, *norm2_b = nullptr;
  const float *fc1_w = nullptr, *fc1_b = nullptr, *fc2_w = nullptr, *fc2_b = nullptr;
};

class VMambaNetwork final : public Network {
 public:
  VMambaNetwork(const ModelConfig& mc, bool backbone)
      : cfg_(parse_vmamba(mc, backbone)), arch_(backbone ? "vmamba_backbone" : "vmamba") {}

  const std::string& arch() const override { return arch_; }
  int input_size() const override { return static_cast<int>(cfg_.img_size); }
  int num_classes() const override { return static_cast<int>(cfg_.num_classes); }

  std::vector<ParamSpec> param_specs() const override {
    const VMambaConfig& c = cfg_;
    std::vector<ParamSpec> s;
    auto ln = [&](const std::string& p, int64_t C) {
      s.push_back({p + ".weight", {C}});
      s.push_back({p + ".bias", {C}});
    };
    const int64_t C0 = c.dims[0];
    if (c.patchembed == "v1") {
      s.push_back({"patch_embed.0.weight", {C0, 3, c.patch_size, c.patch_size}});
      s.push_back({"patch_embed.0.bias", {C0}});
      ln("patch_embed.2", C0);
    } else {
      const int64_t k = c.patch_size / 2 + 1;
      s.push_back({"patch_embed.0.weight", {C0 / 2, 3, k, k}});
      s.push_back({"patch_embed.0.bias", {C0 / 2}});
      ln("patch_embed.2", C0 / 2);
      s.push_back({"patch_embed.5.weight", {C0, C0 / 2, k, k}});
      s.push_back({"patch_embed.5.bias", {C0}});
      ln("patch_embed.7", C0);
    }
    for (int64_t i = 0; i < c.stages(); ++i) {
      const int64_t C = c.dims[i], Dd = c.d_inner(i), R = c.rank(i), N = c.d_state, Hm = c.mlp_hidden(i);
      for (int64_t j = 0; j < c.depths[i]; ++j) {
        const std::string p = "layers." + std::to_string(i) + ".blocks." + std::to_string(j) + ".";
        ln(p + "norm", C);
        s.push_back({p + "op.in_proj.weight", {c.forward_type.with_z ? 2 * Dd : Dd, C}});
        if (c.d_conv > 1) {
          s.push_back({p + "op.conv2d.weight", {Dd, 1, c.d_conv, c.d_conv}});
          if (c.conv_bias) s.push_back({p + "op.conv2d.bias", {Dd}});
        }
        s.push_back({p + "op.x_proj_weight", {kK, R + 2 * N, Dd}});
        s.push_back({p + "op.A_logs", {kK * Dd, N}});
        s.push_back({p + "op.Ds", {kK * Dd}});
        s.push_back({p + "op.dt_projs_weight", {kK, Dd, R}});
        s.push_back({p + "op.dt_projs_bias", {kK, Dd}});
        ln(p + "op.out_norm", Dd);
        s.push_back({p + "op.out_proj.weight", {C, Dd}});
        if (c.mlp_ratio > 0) {
          ln(p + "norm2", C);
          s.push_back({p + "mlp.fc1.weight", {Hm, C}});
          s.push_back({p + "mlp.fc1.bias", {Hm}});
          s.push_back({p + "mlp.fc2.weight", {C, Hm}});
          s.push_back({p + "mlp.fc2.bias", {C}});
        }
      }
      if (i + 1 < c.stages()) {
        const std::string p = "layers." + std::to_string(i) + ".downsample.";
        const int64_t Co = c.dims[i + 1];
        if (c.downsample == "v1") {
          ln(p + "norm", 4 * C);
          s.push_back({p + "reduction.weight", {Co, 4 * C}});
        } else {
          const int64_t k = c.downsample == "v2" ? 2 : 3;
          s.push_back({p + "1.weight", {Co, C, k, k}});
          s.push_back({p + "1.bias", {Co}});
          ln(p + "3", Co);
        }
      }
    }
    if (c.backbone) {
      for (int64_t i : c.out_indices) ln("outnorm" + std::to_string(i), c.dims[i]);
    } else {
      ln("classifier.norm", c.dims.back());
      if (c.num_classes > 0) {
        s.push_back({"classifier.head.weight", {c.num_classes, c.dims.back()}});
        s.push_back({"classifier.head.bias", {c.num_classes}});
      }
    }
    return s;
  }

  // Alternative upstream spellings -> the canonical names / shapes of param_specs():
  //  - root vmamba.py: op.x_proj.weight (K*(R+2N), Dd) and op.dt_projs.weight (K*Dd, R) (grouped Linear layers);
  //  - Linear2d / 1x1-conv weights (O, I, 1, 1) -> (O, I);
  //  - the names upstream VSSM._load_from_state_dict renames (patch_embed.proj/norm, ln_1, self_attention,
  //    root norm / head of older checkpoints);
  //  - backbones drop classifier.* (upstream Backbone_VSSM deletes its classifier and loads classification
  //    checkpoints into the rest).
  //  - backbones given an mmdetection checkpoint keep only its backbone.* tensors (prefix stripped);
  //  - backbones given a classification checkpoint (it has classifier.*) get identity outnorm{i} where the
  //    checkpoint has none, as upstream Backbone_VSSM(pretrained=...) leaves them at their initialisation.
  TensorMap canonicalize(const TensorMap& w) const override {
    TensorMap out;
    std::map<std::string, std::string> origin;
    bool mmdet = false, classification = false;
    if (cfg_.backbone)
      for (const auto& kv : w) mmdet = mmdet || starts_with(kv.first, "backbone.");
    for (const auto& [name, t0] : w) {
      std::string n = name;
      if (mmdet) {
        if (!starts_with(n, "backbone.")) continue;
        n = n.substr(std::string("backbone.").size());
      }
      Tensor t = t0;
      auto replace_prefix = [&](const std::string& from, const std::string& to) {
        if (starts_with(n, from)) n = to + n.substr(from.size());
      };
      auto replace_inner = [&](const std::string& from, const std::string& to) {
        size_t pos = n.find(from);
        if (pos != std::string::npos) n = n.substr(0, pos) + to + n.substr(pos + from.size());
      };
      replace_prefix("patch_embed.proj.", "patch_embed.0.");
      replace_prefix("patch_embed.norm.", "patch_embed.2.");
      replace_prefix("norm.", "classifier.norm.");
      replace_prefix("head.", "classifier.head.");
      if (starts_with(n, "layers.")) {
        replace_inner(".ln_1.", ".norm.");
        replace_inner(".self_attention.", ".op.");
      }
      if (ends_with(n, ".op.x_proj.weight") && t.ndim() == 2 && t.dim(0) % kK == 0) {
        n = n.substr(0, n.size() - std::string("x_proj.weight").size()) + "x_proj_weight";
        t = t.reshape({kK, t.dim(0) / kK, t.dim(1)});
      } else if (ends_with(n, ".op.dt_projs.weight") && (t.ndim() == 2 || t.ndim() == 3) && t.dim(0) % kK == 0) {
        n = n.substr(0, n.size() - std::string("dt_projs.weight").size()) + "dt_projs_weight";
        t = t.reshape({kK, t.dim(0) / kK, t.dim(1)});  // (K*Dd, R[, 1]) -> (K, Dd, R)
      } else if (ends_with(n, ".op.dt_projs.bias")) {
        n = n.substr(0, n.size() - std::string("dt_projs.bias").size()) + "dt_projs_bias";
        if (t.ndim() == 1 && t.dim(0) % kK == 0) t = t.reshape({kK, t.dim(0) / kK});
      }
      if (t.ndim() == 4 && t.dim(2) == 1 && t.dim(3) == 1 &&
          (ends_with(n, "in_proj.weight") || ends_with(n, "out_proj.weight") || ends_with(n, "fc1.weight") ||
           ends_with(n, "fc2.weight") || ends_with(n, "reduction.weight") || ends_with(n, "head.weight")))
        t = t.reshape({t.dim(0), t.dim(1)});
      if (cfg_.backbone && starts_with(n, "classifier.")) {
        classification = true;
        continue;
      }
      auto prev = origin.find(n);
      MAMBACV_CHECK(prev == origin.end(), "weights: tensors \"" << prev->second << "\" and \"" << name
                                                                << "\" both give \"" << n << "\"; keep one spelling");
      origin[n] = name;
      out[n] = t;
    }
    if (classification)
      for (int64_t i : cfg_.out_indices) {
        const std::string p = "outnorm" + std::to_string(i);
        if (out.count(p + ".weight") || out.count(p + ".bias")) continue;
        Tensor g = Tensor::empty({cfg_.dims[static_cast<size_t>(i)]});
        g.fill(1.0f);
        out[p + ".weight"] = g;
        out[p + ".bias"] = Tensor::zeros({cfg_.dims[static_cast<size_t>(i)]});
      }
    return out;
  }

  void bind(const TensorMap& w) override {
    w_ = w;
    const VMambaConfig& c = cfg_;
    blocks_.assign(static_cast<size_t>(c.stages()), {});
    for (int64_t i = 0; i < c.stages(); ++i) {
      for (int64_t j = 0; j < c.depths[i]; ++j) {
        const std::string p = "layers." + std::to_string(i) + ".blocks." + std::to_string(j) + ".";
        Block b;
        b.norm_w = f(p + "norm.weight");
        b.norm_b = f(p + "norm.bias");
        ssm::SS2DWeights& o = b.op;
        o.d_model = c.dims[i];
        o.d_inner = c.d_inner(i);
        o.d_state = c.d_state;
        o.dt_rank = c.rank(i);
        o.d_conv = static_cast<int>(c.d_conv);
        o.with_z = c.forward_type.with_z;
        o.out_norm_eps = kLnEps;
        o.in_proj = f(p + "op.in_proj.weight");
        if (c.d_conv > 1) {
          o.conv_w = f(p + "op.conv2d.weight");
          o.conv_b = c.conv_bias ? f(p + "op.conv2d.bias") : nullptr;
        }
        o.x_proj = f(p + "op.x_proj_weight");
        o.dt_proj_w = f(p + "op.dt_projs_weight");
        o.dt_proj_b = f(p + "op.dt_projs_bias");
        o.Ds = f(p + "op.Ds");
        o.out_norm_w = f(p + "op.out_norm.weight");
        o.out_norm_b = f(p + "op.out_norm.bias");
        o.out_proj = f(p + "op.out_proj.weight");
        ssm::ss2d_prepare(o, f(p + "op.A_logs"));
        if (c.mlp_ratio > 0) {
          b.norm2_w = f(p + "norm2.weight");
          b.norm2_b = f(p + "norm2.bias");
          b.fc1_w = f(p + "mlp.fc1.weight");
          b.fc1_b = f(p + "mlp.fc1.bias");
          b.fc2_w = f(p + "mlp.fc2.weight");
          b.fc2_b = f(p + "mlp.fc2.bias");
        }
        blocks_[static_cast<size_t>(i)].push_back(std::move(b));
      }
    }
  }

  std::map<std::string, Tensor> forward(const Tensor& x, const Policy& policy, const Wanted& want) const override {
    const VMambaConfig& c = cfg_;
    const int64_t B = x.dim(0), Hin = x.dim(2), Win = x.dim(3);
    MAMBACV_CHECK(Hin >= 32 && Win >= 32, "input: VMamba needs images of at least 32x32 pixels, got " << Hin << "x"
                                                                                                  << Win);
    // "*" (forward_all) gives the goldens' module layouts; an explicit "api_features" gives NCHW stage maps.
    const bool api = want.names.count("api_features") > 0;
    std::map<std::string, Tensor> out;
    auto emit_module_layout = [&](const std::string& name, const Tensor& t) {
      out[name] = c.channel_first() ? to_nchw(t) : t.clone();
    };

    // (B, 3, H, W) -> (B, H, W, 3)
    Tensor xh = Tensor::empty({B, Hin, Win, 3});
    ops::nchw_to_nhwc(x.f32(), B, 3, Hin * Win, xh.f32());
    Tensor cur = patch_embed(xh);
    if (want.has("patch_embed")) emit_module_layout("patch_embed", cur);

    for (int64_t i = 0; i < c.stages(); ++i) {
      const int64_t H = cur.dim(1), W = cur.dim(2), C = cur.dim(3), L = H * W, BL = B * L;
      const auto orders = cross_scan_orders(H, W);
      const ssm::SS2DOrders ord = {orders[0].data(), orders[1].data(), orders[2].data(), orders[3].data()};
      Tensor normed = Tensor::empty({B, H, W, C});
      Tensor hidden;
      if (c.mlp_ratio > 0) hidden = Tensor::empty({BL, c.mlp_hidden(i)});
      for (size_t j = 0; j < blocks_[static_cast<size_t>(i)].size(); ++j) {
        const Block& blk = blocks_[static_cast<size_t>(i)][j];
        // x += SS2D(norm(x))
        ops::layer_norm(cur.f32(), BL, C, blk.norm_w, blk.norm_b, kLnEps, normed.f32());
        if (i == 0 && j == 0 && want.has("layers.0.blocks.0.op")) {
          Tensor op = Tensor::empty({B, H, W, C});
          ssm::ss2d_forward(normed.f32(), B, H, W, blk.op, ord, policy, op.f32());
          emit_module_layout("layers.0.blocks.0.op", op);
          ops::add_inplace(cur.f32(), op.f32(), BL * C);
        } else {
          ssm::ss2d_forward(normed.f32(), B, H, W, blk.op, ord, policy, cur.f32(), /*accumulate=*/true);
        }
        // x += fc2(GELU(fc1(norm2(x))))
        if (c.mlp_ratio > 0) {
          const int64_t Hm = c.mlp_hidden(i);
          ops::layer_norm(cur.f32(), BL, C, blk.norm2_w, blk.norm2_b, kLnEps, normed.f32());
          ops::gemm(BL, Hm, C, normed.f32(), C, blk.fc1_w, C, /*trans_b=*/true, hidden.f32(), Hm, blk.fc1_b);
          ops::gelu_inplace(hidden.f32(), BL * Hm);
          ops::gemm(BL, C, Hm, hidden.f32(), Hm, blk.fc2_w, Hm, /*trans_b=*/true, cur.f32(), C, blk.fc2_b, 1.0f);
        }
      }
      const std::string si = std::to_string(i);
      if (api && !c.backbone) {
        out["stage." + si] = to_nchw(cur);
      } else if (want.has("stage." + si)) {
        emit_module_layout("stage." + si, cur);
      }
      if (c.backbone && std::find(c.out_indices.begin(), c.out_indices.end(), i) != c.out_indices.end() &&
          (api || want.has("features." + si))) {
        Tensor o = Tensor::empty({B, H, W, C});
        ops::layer_norm(cur.f32(), BL, C, f("outnorm" + si + ".weight"), f("outnorm" + si + ".bias"), kLnEps, o.f32());
        out["features." + si] = to_nchw(o);
      }
      if (i + 1 < c.stages()) cur = downsample(cur, i);
    }

    if (!c.backbone && c.num_classes > 0 && want.has("logits")) {
      const int64_t L = cur.dim(1) * cur.dim(2), C = cur.dim(3);
      Tensor normed = Tensor::empty({B, L, C});
      ops::layer_norm(cur.f32(), B * L, C, f("classifier.norm.weight"), f("classifier.norm.bias"), kLnEps,
                      normed.f32());
      Tensor pooled = Tensor::zeros({B, C});
      for (int64_t b = 0; b < B; ++b) {
        float* pr = pooled.f32() + b * C;
        for (int64_t l = 0; l < L; ++l) {
          const float* row = normed.f32() + (b * L + l) * C;
          for (int64_t ch = 0; ch < C; ++ch) pr[ch] += row[ch];
        }
        for (int64_t ch = 0; ch < C; ++ch) pr[ch] /= static_cast<float>(L);
      }
      Tensor logits = Tensor::empty({B, c.num_classes});
      ops::linear(pooled.f32(), B, C, f("classifier.head.weight"), f("classifier.head.bias"), c.num_classes,
                  logits.f32());
      out["logits"] = logits;
    }
    return out;
  }

 private:
  const float* f(const std::string& n) const {
    auto it = w_.find(n);
    MAMBACV_CHECK(it != w_.end(), arch_ << ": weight " << n << " was not bound");
    return it->second.f32();
  }

  static Tensor to_nchw(const Tensor& t) {  // (B, H, W, C) -> (B, C, H, W)
    const int64_t B = t.dim(0), H = t.dim(1), W = t.dim(2), C = t.dim(3);
    Tensor o = Tensor::empty({B, C, H, W});
    ops::nhwc_to_nchw(t.f32(), B, H * W, C, o.f32());
    return o;
  }

  // conv (PyTorch weight (Co, Ci, k, k), bias) stride s padding p, then LayerNorm over Co: (B, H, W, Ci) -> NHWC
  Tensor conv_ln(const Tensor& x, const std::string& conv, const std::string& norm, int k, int s, int p) const {
    const int64_t B = x.dim(0), H = x.dim(1), W = x.dim(2), Ci = x.dim(3);
    const Tensor& wt = w_.at(conv + ".weight");
    const int64_t Co = wt.dim(0);
    const int64_t Ho = ops::conv_out_size(H, k, s, p), Wo = ops::conv_out_size(W, k, s, p);
    MAMBACV_CHECK(Ho >= 1 && Wo >= 1, "input: a " << H << "x" << W << " map is too small for " << conv);
    Tensor y = Tensor::empty({B, Ho, Wo, Co});
    ops::conv2d_nhwc(x.f32(), B, H, W, Ci, wt.f32(), f(conv + ".bias"), Co, k, k, s, s, p, p, y.f32());
    ops::layer_norm(y.f32(), B * Ho * Wo, Co, f(norm + ".weight"), f(norm + ".bias"), kLnEps, y.f32());
    return y;
  }

  // upstream _make_patch_embed (v1: Conv k=P s=P -> LN) / _make_patch_embed_v2 (Conv k=P/2+1 s=P/2 p=1 -> LN ->
  // GELU -> Conv -> LN): (B, H, W, 3) -> (B, H', W', C0)
  Tensor patch_embed(const Tensor& xh) const {
    const int P = static_cast<int>(cfg_.patch_size);
    if (cfg_.patchembed == "v1") return conv_ln(xh, "patch_embed.0", "patch_embed.2", P, P, 0);
    const int s = P / 2, k = s + 1;
    Tensor h = conv_ln(xh, "patch_embed.0", "patch_embed.2", k, s, 1);
    ops::gelu_inplace(h.f32(), h.numel());
    return conv_ln(h, "patch_embed.5", "patch_embed.7", k, s, 1);
  }

  // stage i's downsample: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), dims[i+1])
  Tensor downsample(const Tensor& x, int64_t i) const {
    const std::string p = "layers." + std::to_string(i) + ".downsample.";
    if (cfg_.downsample == "v2") return conv_ln(x, p + "1", p + "3", 2, 2, 0);
    if (cfg_.downsample == "v3") return conv_ln(x, p + "1", p + "3", 3, 2, 1);
    // v1, PatchMerging2D: zero-pad bottom/right to even, concat [x(0::2,0::2), x(1::2,0::2), x(0::2,1::2),
    // x(1::2,1::2)] on channels -> LN(4C) -> Linear(4C -> Co, no bias)
    const int64_t B = x.dim(0), H = x.dim(1), W = x.dim(2), C = x.dim(3);
    const int64_t H2 = (H + 1) / 2, W2 = (W + 1) / 2, Co = cfg_.dims[static_cast<size_t>(i + 1)];
    Tensor m = Tensor::empty({B, H2, W2, 4 * C});
    const float* src = x.f32();
    float* dst = m.f32();
    static constexpr int kDh[4] = {0, 1, 0, 1}, kDw[4] = {0, 0, 1, 1};
#pragma omp parallel for num_threads(ops::num_threads())
    for (int64_t r = 0; r < B * H2; ++r) {
      const int64_t b = r / H2, h2 = r % H2;
      for (int64_t w2 = 0; w2 < W2; ++w2) {
        float* o = dst + ((b * H2 + h2) * W2 + w2) * 4 * C;
        for (int q = 0; q < 4; ++q) {
          const int64_t h = 2 * h2 + kDh[q], w = 2 * w2 + kDw[q];
          if (h < H && w < W)
            std::copy(src + ((b * H + h) * W + w) * C, src + ((b * H + h) * W + w + 1) * C, o + q * C);
          else
            std::fill(o + q * C, o + (q + 1) * C, 0.0f);
        }
      }
    }
    ops::layer_norm(m.f32(), B * H2 * W2, 4 * C, f(p + "norm.weight"), f(p + "norm.bias"), kLnEps, m.f32());
    Tensor y = Tensor::empty({B, H2, W2, Co});
    ops::linear(m.f32(), B * H2 * W2, 4 * C, f(p + "reduction.weight"), nullptr, Co, y.f32());
    return y;
  }

  VMambaConfig cfg_;
  std::string arch_;
  TensorMap w_;
  std::vector<std::vector<Block>> blocks_;  // [stage][block]
};

}  // namespace

std::unique_ptr<Network> make_vmamba_network(const ModelConfig& mc) {
  return std::make_unique<VMambaNetwork>(mc, /*backbone=*/false);
}
std::unique_ptr<Network> make_vmamba_backbone_network(const ModelConfig& mc) {
  return std::make_unique<VMambaNetwork>(mc, /*backbone=*/true);
}

}  // namespace mambacv::detail
