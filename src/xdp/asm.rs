//! A tiny eBPF assembler: the few instructions the steering program needs, named as in the
//! kernel's `include/uapi/linux/bpf.h` (BPF_LDX | BPF_MEM | BPF_H is [`Asm::ldx_h`]), with
//! labels so that jumps read as "goto pass" instead of hand-counted offsets. There is no clang or
//! libbpf on these machines and none is wanted: the program is a few dozen instructions.

/// One eBPF instruction, in the kernel's `struct bpf_insn` layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// Registers: r0 return value, r1-r5 arguments (clobbered by calls), r6-r9 callee-saved, r10 frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg(pub u8);
pub const R0: Reg = Reg(0);
pub const R1: Reg = Reg(1);
pub const R2: Reg = Reg(2);
pub const R3: Reg = Reg(3);
pub const R4: Reg = Reg(4);
pub const R5: Reg = Reg(5);
pub const R6: Reg = Reg(6);
pub const R7: Reg = Reg(7);
pub const R8: Reg = Reg(8);
pub const R9: Reg = Reg(9);

// Instruction classes, sizes, modes and operations (uapi/linux/bpf_common.h, bpf.h).
const BPF_LD: u8 = 0x00;
const BPF_LDX: u8 = 0x01;
const BPF_ALU64: u8 = 0x07;
const BPF_JMP: u8 = 0x05;
const BPF_JMP32: u8 = 0x06;
const BPF_W: u8 = 0x00;
const BPF_H: u8 = 0x08;
const BPF_B: u8 = 0x10;
const BPF_DW: u8 = 0x18;
const BPF_IMM: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
const BPF_ADD: u8 = 0x00;
const BPF_AND: u8 = 0x50;
const BPF_LSH: u8 = 0x60;
const BPF_MOV: u8 = 0xb0;
const BPF_JA: u8 = 0x00;
const BPF_JGT: u8 = 0x20;
const BPF_JNE: u8 = 0x50;
const BPF_JLT: u8 = 0xa0;
const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;
/// src_reg of a 64-bit immediate load that names a map by its fd.
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// A jump target, placed with [`Asm::label`] before or after the jumps that use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label(usize);

/// Collects instructions; [`Asm::finish`] resolves the labels.
#[derive(Default)]
pub struct Asm {
    insns: Vec<Insn>,
    /// Where each label was placed (an instruction index), once placed.
    labels: Vec<Option<usize>>,
    /// (instruction index, label) of every jump, patched by `finish`.
    fixups: Vec<(usize, Label)>,
}

/// Why a program could not be assembled (a bug in the program text, not in the input).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    #[error("label {0} is used but never placed")]
    Unplaced(usize),
    #[error("jump at instruction {0} is too far for a 16-bit offset")]
    TooFar(usize),
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    /// A new label, not yet placed.
    pub fn new_label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Places `label` at the next instruction.
    pub fn label(&mut self, label: Label) {
        self.labels[label.0] = Some(self.insns.len());
    }

    fn emit(&mut self, code: u8, dst: Reg, src: Reg, off: i16, imm: i32) {
        self.insns.push(Insn { code, regs: (dst.0 & 0xf) | (src.0 << 4), off, imm });
    }

    fn jump(&mut self, code: u8, dst: Reg, src: Reg, imm: i32, target: Label) {
        self.fixups.push((self.insns.len(), target));
        self.emit(code, dst, src, 0, imm);
    }

    /// dst = imm (64-bit, sign-extended).
    pub fn mov64_imm(&mut self, dst: Reg, imm: i32) {
        self.emit(BPF_ALU64 | BPF_MOV | BPF_K, dst, R0, 0, imm);
    }
    /// dst = src.
    pub fn mov64_reg(&mut self, dst: Reg, src: Reg) {
        self.emit(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0);
    }
    /// dst += imm.
    pub fn add64_imm(&mut self, dst: Reg, imm: i32) {
        self.emit(BPF_ALU64 | BPF_ADD | BPF_K, dst, R0, 0, imm);
    }
    /// dst += src.
    pub fn add64_reg(&mut self, dst: Reg, src: Reg) {
        self.emit(BPF_ALU64 | BPF_ADD | BPF_X, dst, src, 0, 0);
    }
    /// dst &= imm.
    pub fn and64_imm(&mut self, dst: Reg, imm: i32) {
        self.emit(BPF_ALU64 | BPF_AND | BPF_K, dst, R0, 0, imm);
    }
    /// dst <<= imm.
    pub fn lsh64_imm(&mut self, dst: Reg, imm: i32) {
        self.emit(BPF_ALU64 | BPF_LSH | BPF_K, dst, R0, 0, imm);
    }
    /// dst = *(u32 *)(src + off).
    pub fn ldx_w(&mut self, dst: Reg, src: Reg, off: i16) {
        self.emit(BPF_LDX | BPF_MEM | BPF_W, dst, src, off, 0);
    }
    /// dst = *(u16 *)(src + off).
    pub fn ldx_h(&mut self, dst: Reg, src: Reg, off: i16) {
        self.emit(BPF_LDX | BPF_MEM | BPF_H, dst, src, off, 0);
    }
    /// dst = *(u8 *)(src + off).
    pub fn ldx_b(&mut self, dst: Reg, src: Reg, off: i16) {
        self.emit(BPF_LDX | BPF_MEM | BPF_B, dst, src, off, 0);
    }
    /// dst = the map whose fd is `map_fd` (a two-slot 64-bit immediate load the kernel rewrites).
    pub fn ld_map_fd(&mut self, dst: Reg, map_fd: i32) {
        self.emit(BPF_LD | BPF_IMM | BPF_DW, dst, Reg(BPF_PSEUDO_MAP_FD), 0, map_fd);
        self.emit(0, R0, R0, 0, 0);
    }
    /// goto target.
    pub fn ja(&mut self, target: Label) {
        self.jump(BPF_JMP | BPF_JA, R0, R0, 0, target);
    }
    /// if dst > src (unsigned, 64-bit) goto target.
    pub fn jgt_reg(&mut self, dst: Reg, src: Reg, target: Label) {
        self.jump(BPF_JMP | BPF_JGT | BPF_X, dst, src, 0, target);
    }
    /// if dst != imm (64-bit, imm sign-extended) goto target.
    pub fn jne_imm(&mut self, dst: Reg, imm: i32, target: Label) {
        self.jump(BPF_JMP | BPF_JNE | BPF_K, dst, R0, imm, target);
    }
    /// if dst < imm (unsigned, 64-bit) goto target.
    pub fn jlt_imm(&mut self, dst: Reg, imm: i32, target: Label) {
        self.jump(BPF_JMP | BPF_JLT | BPF_K, dst, R0, imm, target);
    }
    /// if (u32)dst != (u32)imm goto target: compares the low 32 bits, so an address whose top bit
    /// is set is not spoiled by sign extension.
    pub fn jne32_imm(&mut self, dst: Reg, imm: u32, target: Label) {
        self.jump(BPF_JMP32 | BPF_JNE | BPF_K, dst, R0, imm as i32, target);
    }
    /// Calls helper number `helper` (arguments in r1-r5, result in r0).
    pub fn call(&mut self, helper: i32) {
        self.emit(BPF_JMP | BPF_CALL, R0, R0, 0, helper);
    }
    /// return r0.
    pub fn exit(&mut self) {
        self.emit(BPF_JMP | BPF_EXIT, R0, R0, 0, 0);
    }

    /// The instructions, every jump pointed at its label.
    pub fn finish(mut self) -> Result<Vec<Insn>, AsmError> {
        for &(at, label) in &self.fixups {
            let target = self.labels[label.0].ok_or(AsmError::Unplaced(label.0))?;
            // A jump's offset counts from the instruction after it.
            let off = target as i64 - (at as i64 + 1);
            self.insns[at].off = i16::try_from(off).map_err(|_| AsmError::TooFar(at))?;
        }
        Ok(self.insns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_kernel_uapi() {
        let mut a = Asm::new();
        a.mov64_imm(R0, 2); // BPF_MOV64_IMM(BPF_REG_0, XDP_PASS)
        a.ldx_w(R2, R1, 4); // BPF_LDX_MEM(BPF_W, BPF_REG_2, BPF_REG_1, 4)
        a.ldx_h(R5, R2, 12);
        a.ldx_b(R5, R2, 23);
        a.mov64_reg(R6, R1);
        a.call(51); // bpf_redirect_map
        a.exit();
        let insns = a.finish().unwrap();
        let raw: Vec<(u8, u8, i16, i32)> = insns.iter().map(|i| (i.code, i.regs, i.off, i.imm)).collect();
        assert_eq!(
            raw,
            vec![
                (0xb7, 0x00, 0, 2),
                (0x61, 0x12, 4, 0),
                (0x69, 0x25, 12, 0),
                (0x71, 0x25, 23, 0),
                (0xbf, 0x16, 0, 0),
                (0x85, 0x00, 0, 51),
                (0x95, 0x00, 0, 0),
            ]
        );
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }

    #[test]
    fn map_load_takes_two_slots_and_jumps_count_them() {
        let mut a = Asm::new();
        let end = a.new_label();
        a.jne_imm(R2, 0, end); // 0
        a.ld_map_fd(R1, 7); // 1, 2
        a.label(end);
        a.exit(); // 3
        let insns = a.finish().unwrap();
        assert_eq!(insns.len(), 4);
        assert_eq!(insns[0].off, 2, "skips both slots of the map load");
        assert_eq!((insns[1].code, insns[1].regs, insns[1].imm), (0x18, 0x11, 7));
        assert_eq!(insns[2], Insn { code: 0, regs: 0, off: 0, imm: 0 });
    }

    #[test]
    fn backward_jumps_and_unplaced_labels() {
        let mut a = Asm::new();
        let top = a.new_label();
        a.label(top);
        a.mov64_imm(R0, 0);
        a.ja(top);
        assert_eq!(a.finish().unwrap()[1].off, -2);

        let mut a = Asm::new();
        let nowhere = a.new_label();
        a.ja(nowhere);
        assert_eq!(a.finish(), Err(AsmError::Unplaced(0)));
    }

    #[test]
    fn jmp32_keeps_the_immediate_bits() {
        let mut a = Asm::new();
        let l = a.new_label();
        a.jne32_imm(R9, 0x8100_12c6, l);
        a.label(l);
        let i = a.finish().unwrap()[0];
        assert_eq!(i.code, 0x56);
        assert_eq!(i.imm as u32, 0x8100_12c6);
    }
}
