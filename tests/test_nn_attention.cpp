// nn/attention.hpp: MultiheadAttention's PyTorch names, shapes and initialisation; its outputs and
// head-averaged / per-head weights against PyTorch 1.13 (self-attention, boolean attn_mask and
// key_padding_mask, cross-attention batch-first with an additive mask, distinct key and value);
// is_causal against the explicit mask; a query with no key; the layer gradcheck (also batch 0,
// with attention dropout replayed) and a gradcheck with masks; errors.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "layer_check.hpp"
#include "tapegrad/nn/attention.hpp"
#include "tapegrad/ops/reduce.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace nn = tapegrad::nn;
using TD = tg::Tensor<double>;
using VD = tg::Var<double>;
using tapegrad::testing::expect_error_exact;
using tapegrad::testing::expect_values;
using tapegrad::testing::randn;
using tapegrad::testing::sine_fill;
using tapegrad::testing::sine_fill_parameters;

namespace {

// PyTorch 1.13 (float64) on the modules and inputs filled by tapegrad::testing::sine_fill:
// tests/reference/attention_reference.py prints these numbers.
constexpr int64_t L = 4, S = 5, N = 2, E = 6, H = 2;

// mha self out [4, 2, 6]
const std::vector<double> kSelfOut = {
    -0.082616869536124363,  0.025003833523608309,   -0.017213440344859263,  -0.17734422870610464,
    -0.021631794900242973,  -0.095614015807399838,  -0.13385754831602792,   0.011074312819594371,
    0.050869485187764574,   -0.24573408250412115,   -0.0070242375710442145, -0.044886225925334186,
    -0.058462033607495301,  0.0032266206548351058,  -0.015037349279230686,  -0.15819813742884042,
    -0.046957511892976041,  -0.084138667636409217,  -0.10238650502793495,   0.016834252295487014,
    0.012434072917057296,   -0.20502159042540646,   -0.017814484393567545,  -0.07255218156038537,
    -0.087225121580285489,  -0.0012613799137831672, 0.019152200566094485,   -0.19504887687110098,
    -0.036590665298335344,  -0.059822529499146543,  -0.071187152424257813,  0.0030395640912941439,
    -0.0020860595218581968, -0.17367054413719704,   -0.04120104442181053,   -0.075626431893980911,
    -0.092369358309880745,  0.021332837102322987,   -0.0030223331240357212, -0.19083176448317007,
    -0.019515061351066273,  -0.084685832179092688,  -0.11821909109201485,   0.0055423480667056262,
    0.04191975167329412,    -0.22938095430815963,   -0.017847145636113726,  -0.048153326820917761};

// mha self weights [2, 4, 4]
const std::vector<double> kSelfWeights = {
    0.3640649727893206,  0.13081167351551898, 0.1354871126422022,  0.36963624105295817,
    0.27852804784706303, 0.29277820351016093, 0.19685656420055392, 0.23183718444222221,
    0.1216304218728407,  0.33985172400269625, 0.40648221864720219, 0.13203563547726083,
    0.28772374996540179, 0.16253621295557483, 0.21939941997547585, 0.33034061710354745,
    0.29457930947360578, 0.11506470731600929, 0.20516772437281217, 0.38518825883757279,
    0.23494737981104258, 0.41191335303039539, 0.18912780532121187, 0.16401146183735027,
    0.18507419395438923, 0.34181380632331226, 0.29910294711784335, 0.17400905260445515,
    0.2589093499606665,  0.10369594212000741, 0.24883040313792182, 0.38856430478140425};

// mha masked out [4, 2, 6]
const std::vector<double> kMaskedOut = {
    -0.010372798252774339, 0.014901893072875327,  -0.077243209545044211,   -0.094660021653261844,
    -0.061575876008899057, -0.13000165296112276,  -0.28243092816152382,    0.070624851796432742,
    0.12744003787091784,   -0.39786642452248161,  0.10034911548292559,     -0.02257949278673832,
    0.051726764514331391,  -0.041073194562518178, -0.071663039606862336,   -0.045431942835901781,
    -0.12667793964478746,  -0.10051453093521361,  -0.1580300712038924,     0.053874111996778842,
    0.023292576488848638,  -0.25519051611593274,  0.031986487960128998,    -0.082597837744500274,
    -0.079841112037510528, -0.01990140263151495,  0.034305927156471877,    -0.19473129380377599,
    -0.052128383017913935, -0.041353387497614559, -0.092887422796231064,   0.049428796842021061,
    -0.036475221174058783, -0.17847968533469255,  -0.00099712830404292963, -0.11942802828532437,
    -0.092369358309880745, 0.021332837102322987,  -0.0030223331240357212,  -0.19083176448317007,
    -0.019515061351066273, -0.084685832179092688, -0.20361956466211628,    0.035994026768797968,
    0.09050096220964296,   -0.31857239533123805,  0.041413420286400424,    -0.03061410522310741};

// mha masked weights [2, 4, 4]
const std::vector<double> kMaskedWeights = {1,
                                            0,
                                            0,
                                            0,
                                            0.48751375622011051,
                                            0.51248624377988961,
                                            0,
                                            0,
                                            0,
                                            0.45544596151603933,
                                            0.54455403848396067,
                                            0,
                                            0.28772374996540179,
                                            0.16253621295557483,
                                            0.21939941997547585,
                                            0.33034061710354745,
                                            1,
                                            0,
                                            0,
                                            0,
                                            0.36326193632605008,
                                            0.63673806367394992,
                                            0,
                                            0,
                                            0,
                                            1,
                                            0,
                                            0,
                                            0.34467712247789295,
                                            0.13814055299019157,
                                            0,
                                            0.51718232453191537};

// mha cross out [2, 4, 6]
const std::vector<double> kCrossOut = {
    -0.12279673647709384,  0.013926670816115424,  0.036359874339496376,   -0.23104280411966771,
    -0.010277918146907428, -0.05564346434691745,  -0.12357243237418865,   0.02747801838813509,
    0.020750574335471436,  -0.22572087615757208,  -0.0011033854146662858, -0.072058361507356991,
    -0.083882238519147237, -0.013820079965428769, 0.030994098780471671,   -0.19680826973773224,
    -0.046305273606302079, -0.046317159602475955, -0.096790774654192765,  0.0069157518531719302,
    0.018830846479096469,  -0.20283745795183938,  -0.026852102449979071,  -0.063808888992036628,
    -0.034532866099804507, 0.0044732019504499093, -0.040473763893566064,  -0.12868943427912044,
    -0.057200204288916173, -0.10126288488670289,  -0.15344965434543195,   0.027173223582962553,
    0.050996325090062272,  -0.26198635596947911,  0.012499620193331215,   -0.052240337562506761,
    -0.11095086974902348,  0.020772220962180826,  0.016237021836536414,   -0.21355772190407701,
    -0.011296357970087809, -0.071897146346429436, -0.071736390604667244,  0.012741688202675103,
    -0.013267703672691325, -0.16985289151748267,  -0.034635341393694952,  -0.087382705867174046};

// mha cross weights [2, 2, 4, 5]
const std::vector<double> kCrossWeights = {
    0.34217563672304718,  0.41773403724175884,  0.13645827024816987,  0.049369126623372547,
    0.054262929163651483, 0.30450011972722418,  0.076244762028148796, 0.21124115042621627,
    0.24247068111988768,  0.16554328669852295,  0.028952069263711369, 0.10432392963503241,
    0.092055071778809672, 0.26239675850720745,  0.51227217081523901,  0.25929083185360402,
    0.3506062478380032,   0.23262723944264288,  0.086308831414474124, 0.07116684945127584,
    0.32500146872341301,  0.44523194068305566,  0.12436848341961551,  0.048451337306992567,
    0.056946769866923284, 0.30816951927512082,  0.070666330981233566, 0.22686416028884232,
    0.23794792686024119,  0.15635206259456208,  0.0267173750540072,   0.10785238960947846,
    0.087790695403004104, 0.24626388482428341,  0.53137565510922691,  0.25299741508470708,
    0.36804047554973118,  0.21901210990850528,  0.086152560669143424, 0.073797438787913089,
    0.59457346909919007,  0.23203356780296636,  0.061184905449732964, 0.08971394884837107,
    0.022494108799739523, 0.10660232208098161,  0.16468288639582809,  0.20223462531348746,
    0.10063010299440768,  0.42585006321529512,  0.049989800280576001, 0.064679218350353784,
    0.18583657966234385,  0.35395805817041953,  0.3455363435363068,   0.39051908624863696,
    0.30593569567940571,  0.10798578828699193,  0.14832925949994455,  0.047230170285020974,
    0.61960015050514627,  0.21029886666090128,  0.057278152419144593, 0.092859479615096954,
    0.019963350799710788, 0.097834971857522116, 0.16283027484610602,  0.21344581832165954,
    0.091102063553967536, 0.43478687142074485,  0.048631903021730913, 0.065724202832665682,
    0.18712687743126652,  0.34499976555940159,  0.35351725115493526,  0.41322937603479271,
    0.28338004028145153,  0.10493457250183796,  0.15539022015386286,  0.043065791028054953};

// mha kv out [2, 4, 6]
const std::vector<double> kKvOut = {
    -0.0062995183871666603, -0.033520486834260885, -0.022768769924873651,  -0.11210293412008895,
    -0.094960010937698042,  -0.072193831317274762, -0.13899876772412534,   0.025150093122594957,
    0.038991614697679033,   -0.24544827564689559,  0.0045080625498016419,  -0.059115789239718115,
    -0.024742350106149141,  -0.03059066769992954,  -0.0078683958287891209, -0.13304886325322146,
    -0.084534566980074999,  -0.063853353826878484, -0.033389130863376228,  -0.019892016883310517,
    -0.012157402368447659,  -0.13856165678157487,  -0.073580016745537657,  -0.071585756743940715,
    -0.15139566034851282,   0.039289716394077662,  0.034292224600709659,   -0.25390584500695856,
    0.019433538175282719,   -0.06870468025166418,  -0.062581492589836363,  -0.015253728137832934,
    0.011426783368210694,   -0.17171569162334993,  -0.057077508365538085,  -0.058384979740727955,
    -0.10963409820261304,   0.019678213243200692,  0.016243019992254665,   -0.21247096658242015,
    -0.012616356921390001,  -0.071387884940478694, -0.14169888724789942,   0.031370389830293832,
    0.034170745218866039,   -0.24583963717081408,  0.0098021290247937015,  -0.065125507536975963};

// The reference's masks: attn_mask true = not allowed; key 2 of batch 1 is padding.
tg::Tensor<bool> attn_mask() {
  return tg::Tensor<bool>::from({{false, true, true, true},
                                 {false, false, true, true},
                                 {true, false, false, true},
                                 {false, false, false, false}});
}
tg::Tensor<bool> key_padding() {
  return tg::Tensor<bool>::from({{false, false, false, false}, {false, false, true, false}});
}

}  // namespace

TEST(MultiheadAttention, NamesShapesAndInitAsPyTorch) {
  tg::Generator gen(1);
  nn::MultiheadAttention<double> m(8, 2, 0.0, true, false, gen);
  std::vector<std::string> names;
  for (const auto& [n, p] : m.named_parameters()) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"in_proj_weight", "in_proj_bias", "out_proj.weight",
                                             "out_proj.bias"}));
  EXPECT_EQ(m.in_proj_weight.shape(), (tg::Shape{24, 8}));
  EXPECT_EQ(m.in_proj_bias.shape(), (tg::Shape{24}));
  EXPECT_EQ(m.out_proj->weight.shape(), (tg::Shape{8, 8}));
  // xavier_uniform_ on [3E, E]: U(+-sqrt(6 / (E + 3E))); zero biases; Linear's default weight.
  const double bound = std::sqrt(6.0 / 32.0);
  const double mx = m.in_proj_weight.value().array().abs().maxCoeff();
  EXPECT_LE(mx, bound);
  EXPECT_GT(mx, 0.9 * bound);
  EXPECT_EQ(m.in_proj_bias.value().array().abs().sum(), 0.0);
  EXPECT_EQ(m.out_proj->bias.value().array().abs().sum(), 0.0);
  const double mo = m.out_proj->weight.value().array().abs().maxCoeff();
  EXPECT_LE(mo, 1 / std::sqrt(8.0));
  EXPECT_GT(mo, 0.8 / std::sqrt(8.0));
  EXPECT_EQ(m.name(), "MultiheadAttention(8, 2)");
  nn::MultiheadAttention<double> nb(8, 4, 0.1, false, true, gen);
  names.clear();
  for (const auto& [n, p] : nb.named_parameters()) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"in_proj_weight", "out_proj.weight"}));
  EXPECT_EQ(nb.name(), "MultiheadAttention(8, 4, dropout=0.1, bias=false, batch_first=true)");
}

TEST(MultiheadAttention, SelfAttentionMatchesPyTorch) {
  nn::MultiheadAttention<double> m(E, H);
  sine_fill_parameters(m);
  tg::Tape<double> tape;
  auto x = tape.constant(sine_fill({L, N, E}, 10.0));
  auto out = m.forward(x, x, x);
  expect_values(out.output.value(), kSelfOut, {L, N, E}, 1e-12);
  expect_values(out.weights.value(), kSelfWeights, {N, L, L}, 1e-12);
  // The Module call is the same self-attention, output only.
  expect_values(m(x).value(), kSelfOut, {L, N, E}, 1e-12);
  auto masked = m.forward(x, x, x, {.key_padding_mask = key_padding(), .attn_mask = attn_mask()});
  expect_values(masked.output.value(), kMaskedOut, {L, N, E}, 1e-12);
  expect_values(masked.weights.value(), kMaskedWeights, {N, L, L}, 1e-12);
}

TEST(MultiheadAttention, CrossAttentionBatchFirstMatchesPyTorch) {
  nn::MultiheadAttention<double> m(E, H, 0.0, true, true);
  sine_fill_parameters(m);
  tg::Tape<double> tape;
  auto q = tape.constant(sine_fill({N, L, E}, 20.0));
  auto kv = tape.constant(sine_fill({N, S, E}, 30.0));
  auto out = m.forward(q, kv, kv,
                       {.attn_mask = sine_fill({L, S}, 40.0, 2.0), .average_attn_weights = false});
  expect_values(out.output.value(), kCrossOut, {N, L, E}, 1e-12);
  expect_values(out.weights.value(), kCrossWeights, {N, H, L, S}, 1e-12);
  auto v = tape.constant(sine_fill({N, S, E}, 50.0));
  expect_values(m.forward(q, kv, v, {.need_weights = false}).output.value(), kKvOut, {N, L, E},
                1e-12);
  EXPECT_FALSE(m.forward(q, kv, v, {.need_weights = false}).weights.defined());
}

TEST(MultiheadAttention, CausalFlagEqualsTheMaskAndEmptyRowsGiveTheBias) {
  nn::MultiheadAttention<double> m(E, H);
  sine_fill_parameters(m);
  tg::Tape<double> tape;
  auto x = tape.constant(randn({L, N, E}, 2));
  tg::Tensor<bool> causal({L, L});
  TD additive({L, L});
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j < L; ++j) causal(i, j) = j > i, additive(i, j) = j > i ? -INFINITY : 0;
  const TD a = m.forward(x, x, x, {.is_causal = true}).output.value().clone();
  expect_values(m.forward(x, x, x, {.attn_mask = causal}).output.value(),
                std::vector<double>(a.data(), a.data() + a.numel()), {L, N, E}, 1e-14);
  expect_values(m.forward(x, x, x, {.attn_mask = additive}).output.value(),
                std::vector<double>(a.data(), a.data() + a.numel()), {L, N, E}, 1e-14);
  // [N*H, L, L] masks, one per batch entry and head: all keys hidden from query 1 of (n=1, h=0)
  // and (n=1, h=1) -> that query's attention output is zero and its output out_proj's bias.
  tg::Tensor<bool> per_head = tg::Tensor<bool>::full({N * H, L, L}, false);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t j = 0; j < L; ++j) per_head(2 + h, 1, j) = true;
  auto out = m.forward(x, x, x, {.attn_mask = per_head});
  for (int64_t e = 0; e < E; ++e)
    EXPECT_NEAR(out.output.value()(1, 1, e), m.out_proj->bias.value()[e], 1e-15);
  for (int64_t j = 0; j < L; ++j) EXPECT_EQ(out.weights.value()(1, 1, j), 0.0);
  for (int64_t i = 0; i < out.output.numel(); ++i)
    EXPECT_TRUE(std::isfinite(out.output.value()[i]));
}

TEST(MultiheadAttention, LayerGradcheck) {
  tg::Generator gen(3);
  nn::MultiheadAttention<double> m(6, 3, 0.0, true, false, gen);
  sine_fill_parameters(m);  // nonzero biases, so their gradients are checked at a generic point
  expect_layer_gradcheck(m, randn({3, 2, 6}, 4));
  nn::MultiheadAttention<double> drop(6, 2, 0.3, true, true, gen);  // batch-first, dropout
  expect_layer_gradcheck(drop, randn({2, 3, 6}, 5));
  drop.eval();
  expect_layer_gradcheck(drop, randn({2, 3, 6}, 6));
  nn::MultiheadAttention<double> nb(4, 1, 0.0, false, false, gen);
  expect_layer_gradcheck(nb, randn({3, 2, 4}, 7));
}

TEST(MultiheadAttention, GradcheckWithMasksAndSeparateKeyValue) {
  tg::Generator gen(8);
  nn::MultiheadAttention<double> m(E, H, 0.0, true, false, gen);
  sine_fill_parameters(m);
  for (int variant = 0; variant < 2; ++variant) {
    const auto r = tg::gradcheck(
        [&](tg::Tape<double>&, const std::vector<VD>& x) {
          // variant 0: key = value, boolean masks; variant 1: three inputs, additive mask, causal.
          if (variant == 0)
            return m
                .forward(x[0], x[1], x[1],
                         {.key_padding_mask = key_padding(), .attn_mask = attn_mask()})
                .output;
          return m.forward(x[0], x[1], x[2], {.attn_mask = randn({L, L}, 9), .is_causal = true})
              .output;
        },
        {randn({L, N, E}, 10), randn({L, N, E}, 11), randn({L, N, E}, 12)}, m.parameters());
    EXPECT_TRUE(r) << "variant " << variant << ": " << r;
  }
}

TEST(MultiheadAttention, Errors) {
  nn::MultiheadAttention<double> m(E, H);
  tg::Tape<double> tape;
  auto x = tape.constant(TD::zeros({L, N, E}));
  auto k = tape.constant(TD::zeros({S, N, E}));
  auto x3 = tape.constant(TD::zeros({L, 3, E}));
  auto bad = tape.constant(TD::zeros({L, N, 4}));
  expect_error_exact<tg::ValueError>([] { nn::MultiheadAttention<double>(6, 4); },
                                     "MultiheadAttention(6, 4): embed_dim must be a positive "
                                     "multiple of num_heads");
  expect_error_exact<tg::ShapeError>(
      [&] { m.forward(x, bad, bad); },
      "MultiheadAttention(6, 2): query [4,2,6], key [4,2,4], value [4,2,4]: the last dim must be "
      "embed_dim (layout [L, N, E], E = 6)");
  expect_error_exact<tg::ShapeError>(
      [&] { m.forward(x, x3, x3); },
      "MultiheadAttention(6, 2): query [4,2,6], key [4,3,6], value [4,3,6]: batch sizes differ "
      "(layout [L, N, E], E = 6)");
  expect_error_exact<tg::ShapeError>(
      [&] { m.forward(x, k, x); },
      "MultiheadAttention(6, 2): query [4,2,6], key [5,2,6], value [4,2,6]: key and value "
      "lengths differ (layout [L, N, E], E = 6)");
  expect_error_exact<tg::ShapeError>(
      [&] {
        m.forward(x, k, k, {.attn_mask = TD::zeros({L, L})});
      },
      "MultiheadAttention: attn_mask of shape [4,4] for query [4,2,6] and key [5,2,6]: expected "
      "[4,5] or [4,4,5]");
  expect_error_exact<tg::ShapeError>(
      [&] {
        m.forward(x, k, k, {.key_padding_mask = tg::Tensor<bool>({N, L})});
      },
      "MultiheadAttention: key_padding_mask of shape [2,4] for key [5,2,6]: expected [2,5]");
}
