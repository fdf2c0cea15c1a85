fn main() {
    println!("narund (work in progress)");
}
