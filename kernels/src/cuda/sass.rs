//! The static SASS instruction mix of each kernel: the cubin ptxas makes is disassembled with NVIDIA's nvdisasm and
//! its instructions counted by class (FFMA, global / shared / local loads and stores) along with the length of the
//! kernel's main loop, so a kernel edit that changes the code the GPU would run shows on a machine without a GPU.
//!
//! The counts are static: every instruction of the kernel's text once, whatever the loop trip counts, branch
//! divergence, caches or occupancy are at run time (docs/kernel-metrics-sass.md).

use super::CudaError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// The SASS instruction mix of one kernel at one architecture.
///
/// `instructions` counts every instruction of the kernel's `.text` section except the padding nvdisasm prints at
/// its end: the trailing `NOP`s and, before them, the unconditional `BRA` to its own address (the self-loop ptxas
/// puts after the last instruction). `NOP`s inside the code count (they are issued).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SassMix {
    pub file: String,
    pub kernel: String,
    /// e.g. "sm_90".
    pub arch: String,
    /// SASS instructions of the kernel, padding excluded.
    pub instructions: u32,
    /// `FFMA` (and `FFMA32I`) instructions: fp32 fused multiply-adds, 2 FLOPs each.
    pub ffma: u32,
    /// `ffma / instructions` (0 for an empty kernel).
    pub fma_share: f64,
    /// `LDG*` and `LDGSTS*` (global memory, incl. the asynchronous global-to-shared copy).
    pub global_loads: u32,
    /// `STG*`.
    pub global_stores: u32,
    /// `LDS*` and `LDSM*`.
    pub shared_loads: u32,
    /// `STS*` and `STSM*`.
    pub shared_stores: u32,
    /// `LDL*`: local memory, which is where register spills go.
    pub local_loads: u32,
    /// `STL*`.
    pub local_stores: u32,
    /// The main loop's length in instructions. A loop is a backward branch: a `BRA` (not `@!PT`) whose target is at
    /// or before the branch, not an unconditional branch to itself, and whose span (the target to the branch,
    /// inclusive) holds no unconditional `EXIT` (that excludes out-of-line code, e.g. a warp-shuffle fallback,
    /// jumping back into the body). The main loop is the loop whose span holds the most FFMA (ties: the longest);
    /// its length is the number of instructions in its span. 0 when the kernel has no loop.
    pub main_loop_instructions: u32,
}

impl SassMix {
    /// The mix as `(name, value)` pairs; the names follow `sass.` in the metric `kernel.<arch>.<kernel>.sass.<name>`.
    pub fn values(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("instructions", self.instructions as f64),
            ("ffma", self.ffma as f64),
            ("fma_share", self.fma_share),
            ("global_loads", self.global_loads as f64),
            ("global_stores", self.global_stores as f64),
            ("shared_loads", self.shared_loads as f64),
            ("shared_stores", self.shared_stores as f64),
            ("local_loads", self.local_loads as f64),
            ("local_stores", self.local_stores as f64),
            ("main_loop_instructions", self.main_loop_instructions as f64),
        ]
    }
}

/// Runs `nvdisasm -c -ndf` on a cubin: the code sections only, one instruction a line with its address, labels for
/// branch targets (no dataflow pass, which only adds comments and time).
pub fn disassemble(nvdisasm: &Path, cubin: &Path) -> Result<String, CudaError> {
    let out = Command::new(nvdisasm)
        .args(["-c", "-ndf"])
        .arg(cubin)
        .output()
        .map_err(|e| CudaError::Nvdisasm(format!("{}: {e}", nvdisasm.display())))?;
    if !out.status.success() {
        let log = String::from_utf8_lossy(&out.stderr);
        let log: Vec<&str> = log
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        return Err(CudaError::Nvdisasm(format!(
            "{} {} failed ({}){}",
            nvdisasm.display(),
            cubin.display(),
            out.status,
            if log.is_empty() {
                String::new()
            } else {
                format!(": {}", log.join("; "))
            }
        )));
    }
    String::from_utf8(out.stdout).map_err(|e| {
        CudaError::Nvdisasm(format!("{}: output is not UTF-8: {e}", nvdisasm.display()))
    })
}

/// One instruction: its predicate (`@P0`, `@!PT`, ...), its opcode with modifiers (`LDG.E.128.CONSTANT`) and, for
/// a branch, the label it names.
struct Instr {
    pred: Option<String>,
    op: String,
    target: Option<String>,
}

impl Instr {
    /// The opcode without its modifiers: `LDG` for `LDG.E.128.CONSTANT`.
    fn base(&self) -> &str {
        self.op.split('.').next().unwrap_or("")
    }
    fn unconditional(&self) -> bool {
        matches!(self.pred.as_deref(), None | Some("@PT"))
    }
}

#[derive(Default)]
struct Function {
    name: String,
    instrs: Vec<Instr>,
    /// Label → index of the instruction that follows it.
    labels: HashMap<String, usize>,
}

/// Parses one instruction line, `/*0260*/  @!P0 LDG.E.CONSTANT R6, desc[UR6][R6.64] ;`, possibly followed by a
/// comment `(*"SpillRefill"*)`. None for any other line.
fn parse_instr(line: &str) -> Option<Instr> {
    let rest = line.trim_start().strip_prefix("/*")?;
    let (addr, rest) = rest.split_once("*/")?;
    if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let rest = rest.split("(*").next().unwrap_or("").trim();
    let rest = rest.strip_suffix(';').unwrap_or(rest).trim();
    let (pred, rest) = match rest.strip_prefix('@') {
        Some(_) => {
            let (p, r) = rest.split_once(char::is_whitespace)?;
            (Some(p.to_string()), r.trim_start())
        }
        None => (None, rest),
    };
    let op = rest.split_whitespace().next()?.to_string();
    let target = rest
        .split_once("`(")
        .and_then(|(_, t)| t.split_once(')'))
        .map(|(t, _)| t.to_string());
    Some(Instr { pred, op, target })
}

/// A label line (`.L_x_12:`, `encode_gemm_relu:`): its name.
fn parse_label(line: &str) -> Option<&str> {
    let l = line.trim();
    let name = l.strip_suffix(':')?;
    (!name.is_empty() && !name.starts_with("/*") && !name.contains(char::is_whitespace))
        .then_some(name)
}

fn split_functions(text: &str) -> Vec<Function> {
    let mut out: Vec<Function> = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix(".text.").and_then(|n| n.strip_suffix(':')) {
            out.push(Function {
                name: name.to_string(),
                ..Default::default()
            });
            continue;
        }
        if l.starts_with("//") {
            // A section banner (`//------ .text.k ------`, `//------ SYMBOLS ------`) ends the function before it.
            if !l.contains(".text.") {
                out.push(Function::default());
            }
            continue;
        }
        let Some(f) = out.last_mut() else { continue };
        if f.name.is_empty() {
            continue;
        }
        if let Some(i) = parse_instr(line) {
            f.instrs.push(i);
        } else if let Some(label) = parse_label(line) {
            f.labels.insert(label.to_string(), f.instrs.len());
        }
    }
    out.retain(|f| !f.name.is_empty());
    out
}

fn mix(file: &str, arch: &str, mut f: Function) -> SassMix {
    // Padding: trailing NOPs, then the unconditional self-loop BRA.
    while f.instrs.last().is_some_and(|i| i.base() == "NOP") {
        f.instrs.pop();
    }
    let last = f.instrs.len().wrapping_sub(1);
    if f.instrs.last().is_some_and(|i| {
        i.base() == "BRA"
            && i.unconditional()
            && i.target.as_ref().and_then(|t| f.labels.get(t)) == Some(&last)
    }) {
        f.instrs.pop();
    }
    let is = &f.instrs;
    let count = |names: &[&str]| is.iter().filter(|i| names.contains(&i.base())).count() as u32;
    let is_ffma = |i: &Instr| matches!(i.base(), "FFMA" | "FFMA32I");
    let ffma = is.iter().filter(|i| is_ffma(i)).count() as u32;
    // Loops: (FFMA in the span, span length).
    let mut main: Option<(usize, usize)> = None;
    for (j, b) in is.iter().enumerate() {
        if b.base() != "BRA" || b.pred.as_deref() == Some("@!PT") {
            continue;
        }
        let Some(&t) = b.target.as_ref().and_then(|t| f.labels.get(t)) else {
            continue;
        };
        if t > j || (t == j && b.unconditional()) {
            continue;
        }
        let span = &is[t..=j];
        if span.iter().any(|i| i.base() == "EXIT" && i.unconditional()) {
            continue;
        }
        let key = (span.iter().filter(|i| is_ffma(i)).count(), span.len());
        if main.is_none_or(|m| key > m) {
            main = Some(key);
        }
    }
    let instructions = is.len() as u32;
    SassMix {
        file: file.into(),
        kernel: f.name.clone(),
        arch: arch.into(),
        instructions,
        ffma,
        fma_share: if instructions == 0 {
            0.0
        } else {
            ffma as f64 / instructions as f64
        },
        global_loads: count(&["LDG", "LDGSTS"]),
        global_stores: count(&["STG"]),
        shared_loads: count(&["LDS", "LDSM"]),
        shared_stores: count(&["STS", "STSM"]),
        local_loads: count(&["LDL"]),
        local_stores: count(&["STL"]),
        main_loop_instructions: main.map_or(0, |(_, len)| len as u32),
    }
}

/// The mix of every function (`.text.<kernel>:` section) in the output of `nvdisasm -c` for one cubin, in the order
/// nvdisasm prints them. `file` and `arch` ("sm_90") label the results.
pub fn parse(file: &str, arch: &str, text: &str) -> Vec<SassMix> {
    split_functions(text)
        .into_iter()
        .map(|f| mix(file, arch, f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real `nvdisasm -c` output (nvdisasm 13.5 on a cubin of ptxas 12.9, sm_90) of two kernels: batchtopk.cu's
    /// `btk_hist` whole, and resample.cu's `per_token_sq_err` with its unrolled middle (0x360..0xd40) cut out and
    /// the NOP padding shortened. per_token_sq_err ends with the out-of-line warp-shuffle fallback that branches
    /// back into the body past an `EXIT`: no loop.
    const NVDISASM_SM90: &str = r#"
	.headerflags	@"EF_CUDA_TEXMODE_UNIFIED EF_CUDA_64BIT_ADDRESS EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
	.elftype	@"ET_EXEC"


//--------------------- .text.btk_hist            --------------------------
	.section	.text.btk_hist,"ax",@progbits
	.sectionflags	@"SHF_BARRIERS=1"
	.align	128
        .global         btk_hist
        .type           btk_hist,@function
        .size           btk_hist,(.L_x_85 - btk_hist)
        .other          btk_hist,@"STO_CUDA_ENTRY STV_DEFAULT"
btk_hist:
.text.btk_hist:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R2, SR_TID.X ;
        /*0020*/                   S2UR UR5, SR_CgaCtaId ;
        /*0030*/                   ULDC.64 UR6, c[0x0][0x210] ;
        /*0040*/                   UMOV UR4, 0x400 ;
        /*0050*/                   S2R R5, SR_CTAID.X ;
        /*0060*/                   ULDC.64 UR10, c[0x0][0x210] ;
        /*0070*/                   ULDC.64 UR8, c[0x0][0x220] ;
        /*0080*/                   BSSY B0, `(.L_x_42) ;
        /*0090*/                   ULEA UR4, UR5, UR4, 0x18 ;
        /*00a0*/                   ULDC UR5, c[0x0][0x218] ;
        /*00b0*/                   SHF.R.S32.HI R3, RZ, 0x1f, R2.reuse ;
        /*00c0*/                   LEA R0, R2, UR4, 0x2 ;
        /*00d0*/                   IMAD.WIDE.U32 R4, R5, 0x100, R2 ;
        /*00e0*/                   STS [R0], RZ ;
        /*00f0*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0100*/                   ISETP.GE.U32.AND P0, PT, R4, UR6, PT ;
        /*0110*/                   ISETP.GE.AND.EX P0, PT, R5, UR7, PT, P0 ;
        /*0120*/                   ULDC.64 UR6, c[0x0][0x208] ;
        /*0130*/               @P0 BRA `(.L_x_43) ;
        /*0140*/                   LDC.64 R6, c[0x0][0x228] ;
        /*0150*/                   LDG.E.CONSTANT R8, desc[UR6][R6.64] ;
        /*0160*/                   LDG.E.CONSTANT R9, desc[UR6][R6.64+0x4] ;
        /*0170*/                   LDC R13, c[0x0][0xc] ;
.L_x_46:
        /*0180*/                   LEA R6, P0, R4, UR8, 0x2 ;
        /*0190*/                   LEA.HI.X R7, R4, UR9, R5, 0x2, P0 ;
        /*01a0*/                   LDG.E.CONSTANT R6, desc[UR6][R6.64] ;
        /*01b0*/                   IMAD.WIDE.U32 R4, R13, 0x100, R4 ;
        /*01c0*/                   BSSY B1, `(.L_x_44) ;
        /*01d0*/                   ISETP.GE.U32.AND P0, PT, R4, UR10, PT ;
        /*01e0*/                   ISETP.GE.AND.EX P0, PT, R5, UR11, PT, P0 ;
        /*01f0*/                   LOP3.LUT R11, R9, R6, RZ, 0xc0, !PT ;
        /*0200*/                   ISETP.NE.AND P1, PT, R11, R8, PT ;
        /*0210*/                   FSETP.LEU.OR P1, PT, R6, RZ, P1 ;
        /*0220*/               @P1 BRA `(.L_x_45) ;
        /*0230*/                   SHF.R.U32.HI R6, RZ, UR5, R6 ;
        /*0240*/                   IMAD.SHL.U32 R6, R6, 0x4, RZ ;
        /*0250*/                   LOP3.LUT R6, R6, 0x3fc, RZ, 0xc0, !PT ;
        /*0260*/                   ATOMS.POPC.INC.32 RZ, [R6+UR4] ;
.L_x_45:
        /*0270*/                   BSYNC B1 ;
.L_x_44:
        /*0280*/              @!P0 BRA `(.L_x_46) ;
.L_x_43:
        /*0290*/                   BSYNC B0 ;
.L_x_42:
        /*02a0*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*02b0*/                   LDS R7, [R0] ;
        /*02c0*/                   ISETP.NE.AND P0, PT, R7, RZ, PT ;
.L_x_79:
        /*02d0*/              @!P0 EXIT ;
        /*02e0*/                   LDC.64 R4, c[0x0][0x230] ;
        /*02f0*/                   IMAD.WIDE R2, R2, 0x4, R4 ;
        /*0300*/                   REDG.E.ADD.STRONG.GPU desc[UR6][R2.64], R7 ;
.L_x_80:
        /*0310*/                   EXIT ;
.L_x_47:
        /*0320*/                   BRA `(.L_x_47);
        /*0330*/                   NOP;
        /*0340*/                   NOP;
        /*0350*/                   NOP;
.L_x_85:


//--------------------- .text.per_token_sq_err    --------------------------
	.section	.text.per_token_sq_err,"ax",@progbits
	.sectionflags	@"SHF_BARRIERS=1"
	.align	128
        .global         per_token_sq_err
        .type           per_token_sq_err,@function
        .size           per_token_sq_err,(.L_x_59 - per_token_sq_err)
        .other          per_token_sq_err,@"STO_CUDA_ENTRY STV_DEFAULT"
per_token_sq_err:
.text.per_token_sq_err:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R13, SR_CTAID.X ;
        /*0020*/                   ULDC UR4, c[0x0][0x210] ;
        /*0030*/                   ISETP.GE.AND P0, PT, R13, UR4, PT ;
.L_x_53:
        /*0040*/               @P0 EXIT ;
        /*0050*/                   S2R R2, SR_TID.X ;
        /*0060*/                   LDC R0, c[0x0][0x214] ;
        /*0070*/                   ULDC.64 UR6, c[0x0][0x208] ;
        /*0080*/                   BSSY B0, `(.L_x_8) ;
        /*0090*/                   HFMA2.MMA R14, -RZ, RZ, 0, 0 ;
        /*00a0*/                   ISETP.GE.AND P0, PT, R2, R0, PT ;
        /*00b0*/               @P0 BRA `(.L_x_9) ;
        /*00c0*/                   LOP3.LUT R5, RZ, R2, RZ, 0x33, !PT ;
        /*00d0*/                   BSSY B1, `(.L_x_10) ;
        /*00e0*/                   MOV R14, RZ ;
        /*00f0*/                   IADD3 R5, R5, R0, RZ ;
        /*0100*/                   MOV R19, R2 ;
        /*0110*/                   LEA.HI R4, R5.reuse, 0x1, RZ, 0x18 ;
        /*0120*/                   ISETP.GE.U32.AND P0, PT, R5, 0x300, PT ;
        /*0130*/                   LOP3.LUT P1, R4, R4, 0x3, RZ, 0xc0, !PT ;
        /*0140*/                   SHF.R.S32.HI R5, RZ, 0x1f, R13 ;
        /*0150*/              @!P1 BRA `(.L_x_11) ;
        /*0160*/                   SHF.R.S32.HI R6, RZ, 0x1f, R0 ;
        /*0170*/                   IMAD R7, R5, R0, RZ ;
        /*0180*/                   SHF.R.S32.HI R3, RZ, 0x1f, R2.reuse ;
        /*0190*/                   ULDC.64 UR4, c[0x0][0x220] ;
        /*01a0*/                   ULDC.64 UR8, c[0x0][0x218] ;
        /*01b0*/                   IMAD R9, R13.reuse, R6, R7 ;
        /*01c0*/                   HFMA2.MMA R14, -RZ, RZ, 0, 0 ;
        /*01d0*/                   IMAD.WIDE.U32 R6, R13, R0, R2 ;
        /*01e0*/                   MOV R19, R2 ;
        /*01f0*/                   SHF.L.U32 R8, R6, 0x2, RZ ;
        /*0200*/                   IADD3 R7, R7, R9, RZ ;
        /*0210*/                   IADD3 R10, P1, R8, UR4, RZ ;
        /*0220*/                   SHF.L.U64.HI R6, R6, 0x2, R7 ;
        /*0230*/                   IADD3 R8, P2, R8, UR8, RZ ;
        /*0240*/                   IADD3.X R7, R6.reuse, UR5, RZ, P1, !PT ;
        /*0250*/                   IADD3.X R15, R6, UR9, RZ, P2, !PT ;
.L_x_12:
        /*0260*/                   IMAD.MOV.U32 R6, RZ, RZ, R10 ;
        /*0270*/                   MOV R9, R15 ;
        /*0280*/                   LDG.E.CONSTANT R6, desc[UR6][R6.64] ;
        /*0290*/                   LDG.E.CONSTANT R9, desc[UR6][R8.64] ;
        /*02a0*/                   IADD3 R4, R4, -0x1, RZ ;
        /*02b0*/                   IADD3 R10, P2, R10, 0x400, RZ ;
        /*02c0*/                   ISETP.NE.AND P1, PT, R4, RZ, PT ;
        /*02d0*/                   IADD3 R19, R19, 0x100, RZ ;
        /*02e0*/                   IADD3.X R7, RZ, R7, RZ, P2, !PT ;
        /*02f0*/                   IADD3 R8, P3, R8, 0x400, RZ ;
        /*0300*/                   IADD3.X R15, RZ, R15, RZ, P3, !PT ;
        /*0310*/                   FADD R11, -R6, R9 ;
        /*0320*/                   FFMA R14, R11, R11, R14 ;
        /*0330*/               @P1 BRA `(.L_x_12) ;
.L_x_11:
        /*0340*/                   BSYNC B1 ;
.L_x_10:
        /*0350*/              @!P0 BRA `(.L_x_9) ;
.L_x_9:
        /*0d50*/                   BSYNC B0 ;
.L_x_8:
        /*0d60*/                   SHFL.DOWN PT, R5, R14, 0x10, 0x1f ;
        /*0d70*/                   SHF.R.U32.HI R8, RZ, 0x5, R2 ;
        /*0d80*/                   ISETP.NE.AND P1, PT, R8, RZ, PT ;
        /*0d90*/                   FADD R5, R5, R14 ;
.L_x_39:
        /*0da0*/                   SHFL.DOWN PT, R0, R5, 0x8, 0x1f ;
        /*0db0*/                   FADD R4, R5, R0 ;
        /*0dc0*/                   LOP3.LUT P0, R0, R2, 0x1f, RZ, 0xc0, !PT ;
.L_x_40:
        /*0dd0*/                   SHFL.DOWN PT, R7, R4, 0x4, 0x1f ;
        /*0de0*/              @!P0 S2R R11, SR_CgaCtaId ;
        /*0df0*/              @!P0 MOV R10, 0x400 ;
        /*0e00*/                   FADD R7, R4, R7 ;
.L_x_41:
        /*0e10*/                   SHFL.DOWN PT, R6, R7, 0x2, 0x1f ;
        /*0e20*/              @!P0 LEA R5, R11, R10, 0x18 ;
        /*0e30*/              @!P0 LEA R5, R8, R5, 0x2 ;
        /*0e40*/                   FADD R6, R7, R6 ;
.L_x_42:
        /*0e50*/                   SHFL.DOWN PT, R9, R6, 0x1, 0x1f ;
        /*0e60*/                   FADD R4, R6, R9 ;
        /*0e70*/              @!P0 STS [R5], R4 ;
        /*0e80*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0e90*/               @P1 BRA `(.L_x_18) ;
        /*0ea0*/                   ULDC UR4, c[0x0][0x0] ;
        /*0eb0*/                   USHF.R.U32.HI UR4, URZ, 0x5, UR4 ;
        /*0ec0*/                   ISETP.GE.U32.AND P1, PT, R0, UR4, PT ;
        /*0ed0*/                   UMOV UR4, 0xffffffff ;
        /*0ee0*/              @!P1 S2R R5, SR_CgaCtaId ;
        /*0ef0*/              @!P1 MOV R4, 0x400 ;
        /*0f00*/              @!P1 LEA R5, R5, R4, 0x18 ;
        /*0f10*/                   HFMA2.MMA R4, -RZ, RZ, 0, 0 ;
        /*0f20*/              @!P1 IMAD R0, R0, 0x4, R5 ;
        /*0f30*/              @!P1 LDS R4, [R0] ;
        /*0f40*/                   BRA.DIV UR4, `(.L_x_19) ;
.L_x_43:
        /*0f50*/                   SHFL.DOWN PT, R5, R4, 0x10, 0x1f ;
        /*0f60*/                   FADD R5, R5, R4 ;
.L_x_44:
        /*0f70*/                   SHFL.DOWN PT, R0, R5, 0x8, 0x1f ;
        /*0f80*/                   FADD R0, R5, R0 ;
.L_x_45:
        /*0f90*/                   SHFL.DOWN PT, R7, R0, 0x4, 0x1f ;
        /*0fa0*/                   FADD R7, R0, R7 ;
.L_x_46:
        /*0fb0*/                   SHFL.DOWN PT, R6, R7, 0x2, 0x1f ;
        /*0fc0*/                   FADD R6, R7, R6 ;
.L_x_47:
        /*0fd0*/                   SHFL.DOWN PT, R9, R6, 0x1, 0x1f ;
.L_x_25:
        /*0fe0*/              @!P0 S2R R5, SR_CgaCtaId ;
        /*0ff0*/              @!P0 MOV R0, 0x400 ;
        /*1000*/                   FADD R9, R6, R9 ;
        /*1010*/              @!P0 LEA R0, R5, R0, 0x18 ;
        /*1020*/              @!P0 STS [R0+0x80], R9 ;
.L_x_18:
        /*1030*/                   WARPSYNC.ALL ;
        /*1040*/                   NOP ;
        /*1050*/                   S2UR UR5, SR_CgaCtaId ;
        /*1060*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*1070*/                   ISETP.NE.AND P0, PT, R2, RZ, PT ;
        /*1080*/                   UMOV UR4, 0x400 ;
        /*1090*/                   ULEA UR4, UR5, UR4, 0x18 ;
        /*10a0*/                   LDS R5, [UR4+0x80] ;
        /*10b0*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
.L_x_54:
        /*10c0*/               @P0 EXIT ;
        /*10d0*/                   LDC.64 R2, c[0x0][0x228] ;
        /*10e0*/                   IMAD.WIDE R2, R13, 0x4, R2 ;
        /*10f0*/                   STG.E desc[UR6][R2.64], R5 ;
.L_x_55:
        /*1100*/                   EXIT ;
.L_x_19:
        /*1110*/                   MOV R11, 0x10 ;
        /*1120*/                   MOV R15, 0x1f ;
        /*1130*/                   MOV R8, 0xffffffff ;
        /*1140*/                   WARPSYNC.COLLECTIVE R8, `(.L_x_20) ;
.L_x_48:
        /*1150*/                   SHFL.DOWN P1, R9, R4, R11, R15 ;
        /*1160*/                   ENDCOLLECTIVE ;
.L_x_20:
        /*1170*/                   MOV R11, 0x8 ;
        /*1180*/                   MOV R5, R9 ;
        /*1190*/                   FADD R5, R5, R4 ;
        /*11a0*/                   MOV R4, R5 ;
        /*11b0*/                   WARPSYNC.COLLECTIVE R8, `(.L_x_21) ;
.L_x_49:
        /*11c0*/                   SHFL.DOWN P1, R9, R4, R11, R15 ;
        /*11d0*/                   ENDCOLLECTIVE ;
.L_x_21:
        /*11e0*/                   MOV R11, 0x4 ;
        /*11f0*/                   MOV R0, R9 ;
        /*1200*/                   FADD R0, R5, R0 ;
        /*1210*/                   IMAD.MOV.U32 R4, RZ, RZ, R0 ;
        /*1220*/                   WARPSYNC.COLLECTIVE R8, `(.L_x_22) ;
.L_x_50:
        /*1230*/                   SHFL.DOWN P1, R9, R4, R11, R15 ;
        /*1240*/                   ENDCOLLECTIVE ;
.L_x_22:
        /*1250*/                   MOV R11, 0x2 ;
        /*1260*/                   MOV R7, R9 ;
        /*1270*/                   FADD R7, R0, R7 ;
        /*1280*/                   MOV R4, R7 ;
        /*1290*/                   WARPSYNC.COLLECTIVE R8, `(.L_x_23) ;
.L_x_51:
        /*12a0*/                   SHFL.DOWN P1, R9, R4, R11, R15 ;
        /*12b0*/                   ENDCOLLECTIVE ;
.L_x_23:
        /*12c0*/                   MOV R11, 0x1 ;
        /*12d0*/                   MOV R6, R9 ;
        /*12e0*/                   FADD R6, R7, R6 ;
        /*12f0*/                   MOV R4, R6 ;
        /*1300*/                   WARPSYNC.COLLECTIVE R8, `(.L_x_24) ;
.L_x_52:
        /*1310*/                   SHFL.DOWN P1, R9, R4, R11, R15 ;
        /*1320*/                   ENDCOLLECTIVE ;
.L_x_24:
        /*1330*/                   BRA `(.L_x_25) ;
.L_x_26:
        /*1340*/                   BRA `(.L_x_26);
        /*1350*/                   NOP;
        /*1360*/                   NOP;
        /*1370*/                   NOP;
.L_x_59:
"#;

    #[test]
    fn parses_the_mix_of_real_nvdisasm_output() {
        let m = parse("x.cu", "sm_90", NVDISASM_SM90);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(
            m[0],
            SassMix {
                file: "x.cu".into(),
                kernel: "btk_hist".into(),
                arch: "sm_90".into(),
                // 0x0000..=0x0310 at 16 bytes an instruction: 50; the BRA self-loop and the NOPs after it dropped.
                instructions: 50,
                ffma: 0,
                fma_share: 0.0,
                global_loads: 3,
                global_stores: 0,
                shared_loads: 1,
                shared_stores: 1,
                local_loads: 0,
                local_stores: 0,
                // .L_x_46 (0x0180) to `@!P0 BRA` (0x0280).
                main_loop_instructions: 17,
            }
        );
        let p = &m[1];
        assert_eq!(p.kernel, "per_token_sq_err");
        assert_eq!(
            (p.instructions, p.ffma, p.global_loads, p.global_stores),
            (149, 1, 2, 1)
        );
        assert_eq!((p.shared_loads, p.shared_stores), (2, 2));
        assert!((p.fma_share - 1.0 / 149.0).abs() < 1e-12);
        // The .L_x_12 loop (0x0260..=0x0330, 14 instructions, its one FFMA); the fallback's `BRA .L_x_25` back
        // over the unconditional EXIT at 0x1100 is not a loop.
        assert_eq!(p.main_loop_instructions, 14);
        assert_eq!(p.values().len(), 10);
    }

    #[test]
    fn parses_predicates_modifiers_targets_and_comments() {
        let i = parse_instr("        /*0280*/              @!P0 BRA `(.L_x_46) ;").unwrap();
        assert_eq!(
            (i.pred.as_deref(), i.base(), i.target.as_deref()),
            (Some("@!P0"), "BRA", Some(".L_x_46"))
        );
        let i = parse_instr("        /*0320*/                   BRA `(.L_x_47);").unwrap();
        assert_eq!((i.pred, i.target.as_deref()), (None, Some(".L_x_47")));
        let i = parse_instr(
            "        /*04c0*/                   LDG.E.128.CONSTANT R4, desc[UR6][R10.64] ;",
        )
        .unwrap();
        assert_eq!((i.op.as_str(), i.base()), ("LDG.E.128.CONSTANT", "LDG"));
        let i = parse_instr(
            "        /*0190*/                   STL [R1+0x1c], RZ                                   (*\"SpillRefill\"*);",
        )
        .unwrap();
        assert_eq!((i.base(), i.target.as_deref()), ("STL", None));
        let i = parse_instr("        /*0040*/               @P0 EXIT ;").unwrap();
        assert!(!i.unconditional());
        assert!(parse_instr("        /*0040*/               @PT EXIT ;")
            .unwrap()
            .unconditional());
        assert!(parse_instr(".L_x_12:").is_none());
        assert!(parse_instr("\t.section\t.text.k,\"ax\",@progbits").is_none());
        assert_eq!(parse_label(".L_x_12:"), Some(".L_x_12"));
        assert_eq!(parse_label("        /*0040*/  EXIT ;"), None);
    }

    #[test]
    fn the_main_loop_is_the_one_with_the_most_ffma_then_the_longest() {
        let text = "\
.text.k:
        /*0000*/                   MOV R0, RZ ;
.L_x_0:
        /*0010*/                   IADD3 R0, R0, 0x1, RZ ;
        /*0020*/                   IADD3 R0, R0, 0x1, RZ ;
        /*0030*/                   IADD3 R0, R0, 0x1, RZ ;
        /*0040*/               @P0 BRA `(.L_x_0) ;
.L_x_1:
        /*0050*/                   FFMA R1, R2, R3, R1 ;
        /*0060*/               @P1 BRA `(.L_x_1) ;
.L_x_2:
        /*0070*/                   FFMA R1, R2, R3, R1 ;
        /*0080*/               @!PT BRA `(.L_x_2) ;
        /*0090*/              @!P2 BRA `(.L_x_3) ;
        /*00a0*/                   NOP ;
.L_x_3:
        /*00b0*/                   EXIT ;
.L_x_4:
        /*00c0*/                   BRA `(.L_x_4);
        /*00d0*/                   NOP;
";
        let m = &parse("k.cu", "sm_80", text)[0];
        // The self-loop and the NOP after it are padding; the NOP inside counts.
        assert_eq!(m.instructions, 12);
        assert_eq!(m.ffma, 2);
        // .L_x_1 (one FFMA, 2 instructions) beats the longer .L_x_0 (no FFMA); `@!PT BRA` never branches and the
        // forward `@!P2 BRA` is no loop.
        assert_eq!(m.main_loop_instructions, 2);
        let none = &parse("k.cu", "sm_80", ".text.k:\n  /*0000*/  EXIT ;\n")[0];
        assert_eq!((none.instructions, none.main_loop_instructions), (1, 0));
        assert!(parse("k.cu", "sm_80", "").is_empty());
    }
}
